# Properties of the data root module (what outlives the nightly teardown), checked
# offline: `terraform test` with a mocked provider.

mock_provider "aws" {
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
  mock_resource "aws_s3_bucket" {
    defaults = {
      arn = "arn:aws:s3:::tftest-flow-code"
    }
  }
}

variables {
  bucket_name       = "tftest-flow-code"
  availability_zone = "us-east-1a"
}

run "bucket_private_encrypted_versioned_tls_only" {
  command = plan

  assert {
    condition = (aws_s3_bucket_public_access_block.code.block_public_acls
      && aws_s3_bucket_public_access_block.code.block_public_policy
      && aws_s3_bucket_public_access_block.code.ignore_public_acls
    && aws_s3_bucket_public_access_block.code.restrict_public_buckets)
    error_message = "all public access to the bucket must be blocked"
  }
  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.code.rule).apply_server_side_encryption_by_default).sse_algorithm == "AES256"
    error_message = "the bucket must be encrypted by default"
  }
  assert {
    condition     = aws_s3_bucket_versioning.code.versioning_configuration[0].status == "Enabled"
    error_message = "the bucket must be versioned"
  }
  assert {
    condition = anytrue([for s in data.aws_iam_policy_document.code_bucket_tls_only.statement :
      s.effect == "Deny" && anytrue([for c in s.condition : c.variable == "aws:SecureTransport" && contains(c.values, "false")])
    ])
    error_message = "the bucket policy must deny requests without TLS"
  }
  assert {
    condition     = length(aws_s3_bucket_policy.code) == 1
    error_message = "the TLS-only bucket policy must be on by default"
  }
}

run "data_volume_encrypted_and_named" {
  command = plan

  assert {
    condition     = aws_ebs_volume.data.encrypted
    error_message = "the data volume must be encrypted"
  }
  assert {
    condition     = aws_ebs_volume.data.tags["Name"] == "prefect2-platform-data"
    error_message = "the data volume is found by its Name tag: <prefix>-platform-data"
  }
}

run "no_apply_can_delete_the_backups" {
  command = plan

  assert {
    condition     = aws_s3_bucket.code.force_destroy == false
    error_message = "only teardown --all may empty the bucket: no force_destroy"
  }
}

run "flow_runner_repository_immutable_encrypted_and_pruned" {
  command = plan

  assert {
    condition     = aws_ecr_repository.flow_runner.name == "prefect2/flow-runner"
    error_message = "the repository is named for the stack"
  }
  assert {
    condition     = aws_ecr_repository.flow_runner.image_tag_mutability == "IMMUTABLE"
    error_message = "a tag must always name what it was built from"
  }
  assert {
    condition     = one(aws_ecr_repository.flow_runner.encryption_configuration).encryption_type == "AES256"
    error_message = "the repository is encrypted"
  }
  assert {
    condition     = jsondecode(aws_ecr_lifecycle_policy.flow_runner.policy).rules[0].selection.countNumber == 5
    error_message = "the lifecycle keeps the last flow_runner_images_kept images"
  }
}

run "keeping_fewer_than_two_images_is_refused" {
  command = plan

  variables {
    flow_runner_images_kept = 1
  }
  expect_failures = [var.flow_runner_images_kept]
}
