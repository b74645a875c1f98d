locals {
  # ec2-0 is the server host (PostgreSQL on the data volume; with server_count 2 or more
  # also the background services); api-N are the further API hosts of the multi-server
  # mode (multiserver.tf), and the redis host stands in for ElastiCache on the emulated cloud.
  hosts = concat(
    [{ name = "${var.name_prefix}-ec2-0", role = "server" }],
    [for i in range(var.worker_count) : { name = "${var.name_prefix}-ec2-${i + 1}", role = "worker" }],
    [for i in range(var.server_count - 1) : { name = "${var.name_prefix}-api-${i + 1}", role = "api" }],
    local.redis_host ? [{ name = "${var.name_prefix}-redis", role = "redis" }] : [],
  )
}

# The subnet given for an account without a default VPC: the security group goes into its VPC.
data "aws_subnet" "chosen" {
  count = var.subnet_id == null ? 0 : 1
  id    = var.subnet_id
}

resource "aws_security_group" "platform" {
  name        = "${var.name_prefix}-platform"
  vpc_id      = one(data.aws_subnet.chosen[*].vpc_id)
  description = "Prefect platform hosts: TLS API and SSH from the operator, TLS API inside the group"

  ingress {
    description = "Prefect API (TLS) from the operator"
    from_port   = 4200
    to_port     = 4200
    protocol    = "tcp"
    cidr_blocks = [var.operator_cidr]
  }

  ingress {
    description = "SSH from the operator"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.operator_cidr]
  }

  # Inside the group too, only the TLS port: workers and flow runs reach the server's
  # API there, and nothing else flows between the hosts.
  ingress {
    description = "Prefect API (TLS) between the platform hosts"
    from_port   = 4200
    to_port     = 4200
    protocol    = "tcp"
    self        = true
  }

  dynamic "ingress" {
    for_each = var.allow_public_api ? [1] : []
    content {
      description = "Prefect API from anywhere (explicit opt-in allow_public_api)"
      from_port   = 4200
      to_port     = 4200
      protocol    = "tcp"
      cidr_blocks = ["0.0.0.0/0"]
    }
  }

  egress {
    description = "All outbound traffic"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = { Name = "${var.name_prefix}-platform" }
}

resource "aws_key_pair" "operator" {
  key_name   = "${var.name_prefix}-operator"
  public_key = var.ssh_public_key
}

# Replacing this replaces every instance (see host_image_version); a new AMI does not (ignore_changes below).
resource "terraform_data" "host_image" {
  input = var.host_image_version
}

resource "aws_instance" "host" {
  for_each = { for h in local.hosts : h.name => h }

  ami               = var.ami_id
  availability_zone = var.availability_zone
  instance_type     = var.instance_type
  key_name          = aws_key_pair.operator.key_name
  # The redis host (emulated cloud only) needs no AWS access: the api role's (SSM only).
  iam_instance_profile = aws_iam_instance_profile.host[each.value.role == "redis" ? "api" : each.value.role].name
  # Multi-server mode: the server hosts (and the redis host) are in the servers' group too,
  # which alone opens PostgreSQL and Redis (multiserver.tf); the worker hosts are not.
  vpc_security_group_ids = concat([aws_security_group.platform.id],
  contains(["server", "api", "redis"], each.value.role) ? aws_security_group.servers[*].id : [])
  subnet_id = var.subnet_id
  # A default VPC's subnets give instances public IPs; a subnet given may not.
  associate_public_ip_address = var.subnet_id == null ? null : true
  user_data                   = local.ssm_agent_user_data
  # A host's safety stop powers it off when the nightly teardown did not come (the
  # base_system role's stack-safety-stop.timer): stopped, it bills no compute and keeps
  # its disks, and the next bootstrap starts it again.
  instance_initiated_shutdown_behavior = var.instance_initiated_shutdown_behavior

  metadata_options {
    http_endpoint               = var.metadata_options.http_endpoint
    http_tokens                 = var.metadata_options.http_tokens
    http_put_response_hop_limit = var.metadata_options.http_put_response_hop_limit
  }

  root_block_device {
    encrypted   = true
    volume_type = "gp3"
    volume_size = var.root_volume_size
  }

  tags = {
    Name = each.value.name
    Role = each.value.role
  }

  lifecycle {
    replace_triggered_by = [terraform_data.host_image]
    # A new AMI (a new bake) is for new instances: a running host keeps what it booted
    # and configure installs the difference, after draining and a backup when Prefect
    # changes. Replacing the server here would skip both.
    ignore_changes = [ami]
  }
}

# The platform database's volume (created by the data root module) on the server.
resource "aws_volume_attachment" "data" {
  device_name = var.data_device_name
  volume_id   = var.data_volume_id
  instance_id = aws_instance.host[local.hosts[0].name].id
  # Stop PostgreSQL's host cleanly before the volume goes away (teardown, replacement).
  stop_instance_before_detaching = true
}
