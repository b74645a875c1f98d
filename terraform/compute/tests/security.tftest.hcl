# Security properties of the compute root module, checked offline: `terraform test` with a mocked
# provider plans the configuration and asserts on what it would create.

mock_provider "aws" {
  # Policy documents must be valid JSON for the resources that take them.
  mock_data "aws_iam_policy_document" {
    defaults = {
      json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
    }
  }
}

variables {
  ami_id                     = "ami-0123456789abcdef0"
  operator_cidr              = "203.0.113.7/32"
  bucket_arn                 = "arn:aws:s3:::tftest-flow-code"
  availability_zone          = "us-east-1a"
  data_volume_id             = "vol-0123456789abcdef0"
  flow_runner_repository_arn = "arn:aws:ecr:us-east-1:123456789012:repository/prefect2/flow-runner"
  ssh_public_key             = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYvUOGkx8vjbKrXnPPm1Q+8ZqgQeexamplekey0000 test"
}

run "one_server_and_n_workers_with_name_and_role_tags" {
  command = plan

  variables {
    worker_count = 3
  }

  assert {
    condition     = length(aws_instance.host) == 4
    error_message = "expected one server and three workers"
  }
  assert {
    condition     = aws_instance.host["prefect2-ec2-0"].tags["Role"] == "server"
    error_message = "host 0 must be the server"
  }
  assert {
    condition     = length([for h in aws_instance.host : h if h.tags["Role"] == "worker"]) == 3
    error_message = "expected three hosts with Role=worker"
  }
}

run "imdsv2_required_with_hop_limit_2" {
  command = plan

  assert {
    condition = alltrue([for h in aws_instance.host :
      h.metadata_options[0].http_tokens == "required" && h.metadata_options[0].http_put_response_hop_limit == 2
    ])
    error_message = "every host must require IMDSv2 tokens with hop limit 2"
  }
}

run "root_volumes_encrypted" {
  command = plan

  assert {
    condition     = alltrue([for h in aws_instance.host : h.root_block_device[0].encrypted])
    error_message = "every root volume must be encrypted"
  }
}

run "api_and_ssh_only_from_operator_cidr" {
  command = plan

  assert {
    condition = alltrue([for r in aws_security_group.platform.ingress :
      !contains(r.cidr_blocks == null ? [] : r.cidr_blocks, "0.0.0.0/0") if r.from_port == 4200 || r.from_port == 22
    ])
    error_message = "ports 4200 and 22 must not be open to 0.0.0.0/0"
  }
  assert {
    condition = length([for r in aws_security_group.platform.ingress : r
      if r.from_port == 4200 && contains(r.cidr_blocks == null ? [] : r.cidr_blocks, "203.0.113.7/32")
    ]) == 1
    error_message = "port 4200 must be open to the operator CIDR"
  }
  assert {
    condition = length([for r in aws_security_group.platform.ingress : r
      if r.self == true && r.protocol == "tcp" && r.from_port == 4200 && r.to_port == 4200
    ]) == 1
    error_message = "the TLS port must be open inside the group"
  }
  assert {
    condition     = alltrue([for r in aws_security_group.platform.ingress : contains([4200, 22], r.from_port) && r.protocol == "tcp"])
    error_message = "only the TLS port (4200) and SSH (22) may be open"
  }
}

run "open_api_refused_without_opt_in" {
  command = plan

  variables {
    operator_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.operator_cidr]
}

run "open_api_allowed_with_opt_in" {
  command = plan

  variables {
    allow_public_api = true
  }

  assert {
    condition = length([for r in aws_security_group.platform.ingress : r
      if r.from_port == 4200 && contains(r.cidr_blocks == null ? [] : r.cidr_blocks, "0.0.0.0/0")
    ]) == 1
    error_message = "allow_public_api must open 4200 to 0.0.0.0/0"
  }
}

run "each_role_least_privilege" {
  command = plan

  assert {
    condition = alltrue(flatten([for d in [data.aws_iam_policy_document.read_flow_code, data.aws_iam_policy_document.write_backups, data.aws_iam_policy_document.ssm_agent] :
      [for s in d.statement : [for a in s.actions : !endswith(a, "*")]]
    ]))
    error_message = "no role policy may use a wildcard action"
  }
  assert {
    condition = (toset(flatten([for s in data.aws_iam_policy_document.read_flow_code.statement : s.actions])) == toset(["s3:ListBucket", "s3:GetObject"])
    && one([for s in data.aws_iam_policy_document.read_flow_code.statement : s.resources if s.sid == "ReadFlowCode"]) == toset(["arn:aws:s3:::tftest-flow-code/testflow/*"]))
    error_message = "worker hosts (and every flow run) read the flow code prefix only"
  }
  assert {
    condition = (one(data.aws_iam_policy_document.write_backups.statement).resources == toset(["arn:aws:s3:::tftest-flow-code/backups/*"])
    && !contains(one(data.aws_iam_policy_document.write_backups.statement).actions, "s3:GetObject"))
    error_message = "the server host writes backups/ only, and cannot read a backup"
  }
  assert {
    condition     = aws_iam_role_policy.read_flow_code.role == "prefect2-us-east-1-worker" && aws_iam_role_policy.write_backups.role == "prefect2-us-east-1-server"
    error_message = "the worker role reads code, the server role writes backups"
  }
  assert {
    condition = (!contains(flatten([for s in data.aws_iam_policy_document.ssm_agent.statement : s.actions]), "ssm:GetParameter")
    && !contains(flatten([for s in data.aws_iam_policy_document.ssm_agent.statement : s.actions]), "ssm:GetParameters"))
    error_message = "the SSM agent's policy must not read the account's parameters"
  }
  assert {
    condition     = aws_iam_role.host["server"].name == "prefect2-us-east-1-server" && aws_iam_role.host["worker"].name == "prefect2-us-east-1-worker"
    error_message = "IAM names carry the region (IAM is global)"
  }
  assert {
    condition     = aws_instance.host["prefect2-ec2-0"].iam_instance_profile == "prefect2-us-east-1-server" && aws_instance.host["prefect2-ec2-1"].iam_instance_profile == "prefect2-us-east-1-worker"
    error_message = "each host gets the profile of its role"
  }
}

run "the_trust_policy_follows_the_partition" {
  command = plan

  override_data {
    target = data.aws_partition.current
    values = {
      partition  = "aws-cn"
      dns_suffix = "amazonaws.com.cn"
    }
  }

  assert {
    condition     = one(one(data.aws_iam_policy_document.assume_ec2.statement).principals).identifiers == toset(["ec2.amazonaws.com.cn"])
    error_message = "the EC2 service principal must come from the partition, not a hard-coded aws"
  }
}

run "ssm_association_off_by_default" {
  command = plan

  assert {
    condition     = length(aws_ssm_association.update_agent) == 0
    error_message = "the SSM association must be opt-in (the emulator lacks it)"
  }
}

run "data_volume_attached_to_the_server_in_its_zone" {
  command = plan

  assert {
    condition     = aws_volume_attachment.data.volume_id == "vol-0123456789abcdef0"
    error_message = "the data volume must be attached"
  }
  assert {
    condition     = alltrue([for h in aws_instance.host : h.availability_zone == "us-east-1a"])
    error_message = "every host must be in the data volume's availability zone"
  }
}

run "a_subnet_given_holds_every_host_with_a_public_ip_and_the_group_in_its_vpc" {
  command = plan

  variables {
    subnet_id = "subnet-0123456789abcdef0"
  }

  override_data {
    target = data.aws_subnet.chosen[0]
    values = {
      vpc_id            = "vpc-0123456789abcdef0"
      availability_zone = "us-east-1a"
    }
  }

  assert {
    condition = alltrue([for h in aws_instance.host :
      h.subnet_id == "subnet-0123456789abcdef0" && h.associate_public_ip_address
    ])
    error_message = "every host must be in the subnet given, with a public IP"
  }
  assert {
    condition     = aws_security_group.platform.vpc_id == "vpc-0123456789abcdef0"
    error_message = "the security group must be in the subnet's VPC"
  }
}

run "worker_role_pulls_from_the_stacks_repository_only" {
  command = plan

  assert {
    condition     = aws_iam_role_policy.pull_flow_runner.role == "prefect2-us-east-1-worker"
    error_message = "the pull policy belongs to the worker role"
  }
  assert {
    condition = alltrue([for s in data.aws_iam_policy_document.pull_flow_runner.statement :
    s.resources == toset(["*"]) ? s.actions == toset(["ecr:GetAuthorizationToken"]) : s.resources == toset([var.flow_runner_repository_arn])])
    error_message = "only the token call may name every resource; the pulls name the stack's repository"
  }
  assert {
    condition = !anytrue([for s in data.aws_iam_policy_document.pull_flow_runner.statement :
    anytrue([for a in s.actions : contains(["ecr:PutImage", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:*"], a)])])
    error_message = "worker hosts must not push"
  }
}

run "a_repository_arn_that_is_not_one_is_refused" {
  command = plan

  variables {
    flow_runner_repository_arn = "arn:aws:s3:::not-a-repository"
  }
  expect_failures = [var.flow_runner_repository_arn]
}

run "one_server_host_makes_no_load_balancer_and_no_redis" {
  command = plan

  assert {
    condition     = length(aws_lb.api) == 0 && length(aws_elasticache_replication_group.redis) == 0 && length(aws_instance.host) == 2
    error_message = "server_count 1 must stay one server host: no load balancer, no Redis, no API host"
  }
  assert {
    condition     = !contains(keys(aws_lb.api), "api-in") && output.internal_load_balancer == null
    error_message = "server_count 1 makes no internal load balancer either"
  }
}

run "two_servers_behind_a_tls_passthrough_balancer_with_redis_encrypted" {
  command = plan

  variables {
    server_count     = 2
    redis_auth_token = "0123456789abcdef0123456789abcdef"
  }

  assert {
    condition     = aws_instance.host["prefect2-api-1"].tags["Role"] == "api" && length(aws_instance.host) == 3
    error_message = "server_count 2 adds one API host"
  }
  assert {
    condition     = aws_lb.api["api"].load_balancer_type == "network" && aws_lb_listener.api["api"].protocol == "TCP" && aws_lb_listener.api["api"].port == 4200
    error_message = "the API's balancer passes TLS through on 4200 (a network load balancer, a TCP listener)"
  }
  assert {
    condition     = length([for k in keys(aws_lb_target_group_attachment.api) : k if !startswith(k, "api-in/")]) == 2 && aws_lb_target_group.api["api"].health_check[0].protocol == "HTTPS" && aws_lb_target_group.api["api"].health_check[0].path == "/api/health"
    error_message = "both server hosts are targets, checked over HTTPS on /api/health"
  }
  assert {
    condition     = length(aws_lb.api["api"].security_groups) == 1
    error_message = "the balancer keeps the hosts' group: the API from the operator's CIDR only"
  }
  assert {
    condition     = aws_elasticache_replication_group.redis[0].transit_encryption_enabled && aws_elasticache_replication_group.redis[0].at_rest_encryption_enabled
    error_message = "ElastiCache must encrypt in transit and at rest"
  }
  assert {
    condition     = one([for q in aws_elasticache_parameter_group.redis[0].parameter : q.value if q.name == "maxmemory-policy"]) == "noeviction"
    error_message = "ElastiCache refuses writes when full, like the redis host, instead of evicting leases and docket keys"
  }
  assert {
    condition = length([for r in aws_security_group.servers[0].ingress : r
    if r.self == true && r.from_port == 5432 && r.to_port == 5432]) == 1 && length(aws_security_group.servers[0].ingress) == 1
    error_message = "PostgreSQL is open between the server hosts, in their own group (ElastiCache has its own)"
  }
  assert {
    condition     = alltrue([for r in aws_security_group.platform.ingress : contains([4200, 22], r.from_port)])
    error_message = "the hosts' group (the worker hosts') opens neither PostgreSQL nor Redis"
  }
}

run "two_servers_on_aws_give_the_hosts_an_internal_balancer" {
  command = plan

  variables {
    server_count     = 2
    redis_auth_token = "0123456789abcdef0123456789abcdef"
  }

  assert {
    condition     = aws_lb.api["api-in"].internal && !aws_lb.api["api"].internal && aws_lb.api["api-in"].name == "prefect2-api-in" && aws_lb.api["api-in"].load_balancer_type == "network"
    error_message = "on aws the hosts get an internal network load balancer <prefix>-api-in beside the public <prefix>-api"
  }
  assert {
    condition     = aws_lb_listener.api["api-in"].protocol == "TCP" && aws_lb_listener.api["api-in"].port == 4200 && aws_lb_target_group.api["api-in"].name == "prefect2-api-in"
    error_message = "the internal balancer passes TLS through on 4200 to its own target group"
  }
  assert {
    condition     = toset([for k in keys(aws_lb_target_group_attachment.api) : trimprefix(k, "api-in/") if startswith(k, "api-in/")]) == toset([for k in keys(aws_lb_target_group_attachment.api) : k if !startswith(k, "api-in/")]) && length(aws_lb_target_group_attachment.api) == 4
    error_message = "the internal target group has the same hosts as the public one"
  }
  assert {
    condition     = aws_lb_target_group.api["api-in"].health_check[0].protocol == "HTTPS" && aws_lb_target_group.api["api-in"].health_check[0].path == "/api/health"
    error_message = "the internal target group checks the hosts as the public one does"
  }
  assert {
    condition     = aws_lb_target_group.api["api-in"].preserve_client_ip == "false"
    error_message = "the targets must see the internal balancer's address (the group's self rule, no hairpinning)"
  }
  assert {
    condition     = length(aws_lb.api["api-in"].security_groups) == 1
    error_message = "the internal balancer is in the hosts' group, whose self rule admits the hosts"
  }
}

run "the_emulated_cloud_makes_no_internal_balancer" {
  command = plan

  # What stack/terraform.py's local override sets.
  variables {
    server_count                  = 2
    redis_host                    = true
    enable_internal_load_balancer = false
  }

  assert {
    condition     = keys(aws_lb.api) == ["api"] && keys(aws_lb_target_group.api) == ["api"] && keys(aws_lb_listener.api) == ["api"] && length(aws_lb_target_group_attachment.api) == 2
    error_message = "the twin runs only the <prefix>-api balancer: no internal one beside it"
  }
  assert {
    condition     = output.internal_load_balancer == null
    error_message = "no internal balancer, no output"
  }
  assert {
    condition = length([for r in aws_security_group.servers[0].ingress : r
    if r.self == true && contains([5432, 6379], r.from_port)]) == 2
    error_message = "the redis host's TLS port is open between the server hosts too"
  }
}

run "server_count_above_five_is_refused" {
  command = plan

  variables {
    server_count = 6
  }

  expect_failures = [var.server_count]
}
