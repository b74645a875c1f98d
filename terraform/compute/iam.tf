# Two instance roles, least privilege each. Every flow run on a worker host (process and
# Docker, through the hop-limit-2 metadata) acts with the worker role: it may read the
# flow code and nothing else. The server role writes backups (pg_dumps that hold every
# block document) and cannot read them back; the operator restores them. Names carry
# the region, so one team in two regions (IAM is global) never collides.

data "aws_partition" "current" {}

locals {
  # The api role (multi-server mode's further API hosts) has the SSM agent's rights only.
  role_name = { for role in concat(["server", "worker"], var.server_count > 1 ? ["api"] : []) :
  role => "${var.name_prefix}-${var.region}-${role}" }
  code_arn   = "${var.bucket_arn}/${var.flow_code_prefix}/*"
  backup_arn = "${var.bucket_arn}/backups/*"
}

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.${data.aws_partition.current.dns_suffix}"]
    }
  }
}

resource "aws_iam_role" "host" {
  for_each = local.role_name

  name               = each.value
  description        = "Role of the Prefect platform's ${each.key} hosts"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
}

resource "aws_iam_instance_profile" "host" {
  for_each = local.role_name

  name = each.value
  role = aws_iam_role.host[each.key].name
}

# Worker hosts and their flow runs: list and read the flow code prefix only.
data "aws_iam_policy_document" "read_flow_code" {
  statement {
    sid       = "ListFlowCode"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.flow_code_prefix}/*", "${var.flow_code_prefix}/"]
    }
  }
  statement {
    sid       = "ReadFlowCode"
    actions   = ["s3:GetObject"]
    resources = [local.code_arn]
  }
}

# The server host's nightly backup: write (and remove a failed one's) dumps under backups/.
data "aws_iam_policy_document" "write_backups" {
  statement {
    sid       = "WriteBackups"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"]
    resources = [local.backup_arn]
  }
}

resource "aws_iam_role_policy" "read_flow_code" {
  name   = "${var.name_prefix}-read-flow-code"
  role   = aws_iam_role.host["worker"].name
  policy = data.aws_iam_policy_document.read_flow_code.json
}

resource "aws_iam_role_policy" "write_backups" {
  name   = "${var.name_prefix}-write-backups"
  role   = aws_iam_role.host["server"].name
  policy = data.aws_iam_policy_document.write_backups.json
}

# Worker hosts pull the flow-runner image (the Docker pool's) from the stack's repository,
# and from no other. The token call takes no resource.
data "aws_iam_policy_document" "pull_flow_runner" {
  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "PullFlowRunner"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [var.flow_runner_repository_arn]
  }
}

resource "aws_iam_role_policy" "pull_flow_runner" {
  name   = "${var.name_prefix}-pull-flow-runner"
  role   = aws_iam_role.host["worker"].name
  policy = data.aws_iam_policy_document.pull_flow_runner.json
}

# The SSM agent's own calls (Session Manager, inventory, associations), instead of the
# managed AmazonSSMManagedInstanceCore, which also grants ssm:GetParameter* on every
# parameter of the account.
data "aws_iam_policy_document" "ssm_agent" {
  statement {
    sid = "SsmAgent"
    actions = [
      "ssm:UpdateInstanceInformation", "ssm:ListAssociations", "ssm:ListInstanceAssociations",
      "ssm:DescribeAssociation", "ssm:UpdateAssociationStatus", "ssm:UpdateInstanceAssociationStatus",
      "ssm:GetDocument", "ssm:DescribeDocument", "ssm:PutInventory", "ssm:PutComplianceItems",
      "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
      "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage", "ec2messages:FailMessage",
      "ec2messages:GetEndpoint", "ec2messages:GetMessages", "ec2messages:SendReply",
    ]
    resources = ["*"] # these actions take no resource
  }
}

resource "aws_iam_role_policy" "ssm_agent" {
  for_each = local.role_name

  name   = "${var.name_prefix}-ssm-agent"
  role   = aws_iam_role.host[each.key].name
  policy = data.aws_iam_policy_document.ssm_agent.json
}
