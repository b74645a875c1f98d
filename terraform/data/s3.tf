resource "aws_s3_bucket" "code" {
  bucket        = var.bucket_name
  force_destroy = var.bucket_force_destroy
  tags          = { Name = var.bucket_name }
}

resource "aws_s3_bucket_versioning" "code" {
  bucket = aws_s3_bucket.code.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "code" {
  bucket = aws_s3_bucket.code.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "code" {
  bucket                  = aws_s3_bucket.code.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

data "aws_iam_policy_document" "code_bucket_tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.code.arn,
      "${aws_s3_bucket.code.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "code" {
  count = var.bucket_tls_only ? 1 : 0

  bucket = aws_s3_bucket.code.id
  policy = data.aws_iam_policy_document.code_bucket_tls_only.json

  # The public access block must exist first, or AWS may reject the policy.
  depends_on = [aws_s3_bucket_public_access_block.code]
}

# Backups do not grow forever: the provision step puts the code bucket's lifecycle rule
# (each backup expires after STACK_BACKUP_RETENTION_DAYS) with one S3 call, not as a
# resource here, whose creation waits about 55 s for S3 to read the rule back the same
# several times, and holds the compute module back as long (flows/provision.py,
# keep_backups_for). A stack made when it was a resource here keeps its rule: Terraform
# forgets it without deleting it.
removed {
  from = aws_s3_bucket_lifecycle_configuration.backups

  lifecycle {
    destroy = false
  }
}
