# Prefect's multi-server mode (server_count 2 to 5; docs/architecture.md): the API hosts
# behind one load balancer, and Redis for the servers' messaging, causal ordering, lease
# storage and docket. Nothing here exists with server_count 1.
#
# The load balancer is a network load balancer passing TLS through: each API host's nginx
# terminates it with the stack's certificate (which names the balancer's DNS name), so
# clients verify the platform end to end exactly as with one server, websockets (events,
# logs) need nothing special, and no certificate goes into ACM. Its target group checks
# each host's /api/health over HTTPS.
#
# On aws a second, internal balancer serves the clients on the hosts (workers, flow runs):
# the public one's DNS name resolves to public IPs even inside the VPC, so their traffic
# would leave through the internet gateway and come back from the hosts' public IPs, which
# the group's self rule does not match. The operator keeps the public one.
#
# Redis lives in this (compute) module, not the data module: it holds only messages in
# flight, leases and the docket's queue, all of which the servers rebuild; every run and
# its history is in PostgreSQL on the data volume. So the nightly teardown removes it
# with the hosts and stops its cost too.

locals {
  multi_server = var.server_count > 1
  # On the emulated cloud a host of the stack runs Redis instead (its ElastiCache keeps
  # no clusters); on aws, ElastiCache with TLS in transit and an AUTH token.
  redis_host  = local.multi_server && var.redis_host
  elasticache = local.multi_server && !var.redis_host
  # The emulated cloud turns it off: its twin runs only the <prefix>-api balancer.
  internal_lb = local.multi_server && var.enable_internal_load_balancer
  api_hosts   = [for h in local.hosts : h.name if contains(["server", "api"], h.role)]
}

# The subnet of the balancer: the one given, else the default VPC's in the hosts' zone.
data "aws_subnet" "default_for_az" {
  count             = local.multi_server && var.subnet_id == null ? 1 : 0
  availability_zone = var.availability_zone
  default_for_az    = true
}

locals {
  lb_subnet_id = local.multi_server ? coalesce(var.subnet_id, one(data.aws_subnet.default_for_az[*].id)) : null
  lb_vpc_id    = local.multi_server ? (var.subnet_id == null ? one(data.aws_subnet.default_for_az[*].vpc_id) : one(data.aws_subnet.chosen[*].vpc_id)) : null
}

# The balancers, by name suffix: the operator's, internet-facing; on aws also the hosts',
# internal (above). Same hosts, port and check; a target group belongs to one balancer
# only, so each has its own. <prefix>-api-in stays within AWS's 32 characters (the
# prefix has at most 20).
locals {
  balancers = merge(
    local.multi_server ? { "api" = { internal = false, preserve_client_ip = null } } : {},
    # The internal one's targets see its address (in the group, so the self rule admits
    # it) instead of the client's: with the client's, a target that is its own client
    # through the balancer (hairpinning) never gets its connection answered.
    local.internal_lb ? { "api-in" = { internal = true, preserve_client_ip = "false" } } : {},
  )
  # One attachment per balancer and API host; the public balancer's keyed by host alone.
  balancer_targets = { for pair in setproduct(keys(local.balancers), local.api_hosts) :
  (pair[0] == "api" ? pair[1] : "${pair[0]}/${pair[1]}") => { balancer = pair[0], host = pair[1] } }
}

resource "aws_lb" "api" {
  for_each           = local.balancers
  name               = "${var.name_prefix}-${each.key}"
  load_balancer_type = "network"
  internal           = each.value.internal
  subnets            = [local.lb_subnet_id]
  # The hosts' group: the API port from the operator's CIDR and from the hosts only (its
  # self rule admits the hosts, and the hosts admit the balancer).
  security_groups = [aws_security_group.platform.id]

  tags = { Name = "${var.name_prefix}-${each.key}" }
}

resource "aws_lb_target_group" "api" {
  for_each           = local.balancers
  name               = "${var.name_prefix}-${each.key}"
  port               = 4200
  protocol           = "TCP"
  target_type        = "instance"
  vpc_id             = local.lb_vpc_id
  preserve_client_ip = each.value.preserve_client_ip
  # A host leaving (configure restarts API hosts one at a time) gets this long to finish
  # its requests before the balancer forgets it.
  deregistration_delay = 15

  health_check {
    protocol            = "HTTPS"
    path                = "/api/health"
    port                = "traffic-port"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  tags = { Name = "${var.name_prefix}-${each.key}" }
}

resource "aws_lb_target_group_attachment" "api" {
  for_each         = local.balancer_targets
  target_group_arn = aws_lb_target_group.api[each.value.balancer].arn
  target_id        = aws_instance.host[each.value.host].id
  port             = 4200
}

resource "aws_lb_listener" "api" {
  for_each          = local.balancers
  load_balancer_arn = aws_lb.api[each.key].arn
  port              = 4200
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api[each.key].arn
  }
}

# Stacks made when the public balancer was the only one (count = 1).
moved {
  from = aws_lb.api[0]
  to   = aws_lb.api["api"]
}

moved {
  from = aws_lb_target_group.api[0]
  to   = aws_lb_target_group.api["api"]
}

moved {
  from = aws_lb_listener.api[0]
  to   = aws_lb_listener.api["api"]
}

# --- The servers' own group ---------------------------------------------------------------
# PostgreSQL (the API hosts use the server host's) and the redis host's Redis are open
# between the server hosts only: a flow run on a worker host reaches the API, not the
# database or the message broker under it.

resource "aws_security_group" "servers" {
  count       = local.multi_server ? 1 : 0
  name        = "${var.name_prefix}-servers"
  vpc_id      = local.lb_vpc_id
  description = "Prefect server hosts: PostgreSQL and Redis between them only"

  ingress {
    description = "PostgreSQL of the server host from the API hosts"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    self        = true
  }

  dynamic "ingress" {
    for_each = local.redis_host ? [6379] : []
    content {
      description = "Redis (TLS) of the redis host from the server hosts"
      from_port   = ingress.value
      to_port     = ingress.value
      protocol    = "tcp"
      self        = true
    }
  }

  egress {
    description = "All outbound traffic"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = { Name = "${var.name_prefix}-servers" }
}

# --- Redis on aws: ElastiCache -------------------------------------------------------------

resource "aws_security_group" "redis" {
  count       = local.elasticache ? 1 : 0
  name        = "${var.name_prefix}-redis"
  vpc_id      = var.subnet_id == null ? one(data.aws_subnet.default_for_az[*].vpc_id) : one(data.aws_subnet.chosen[*].vpc_id)
  description = "Prefect multi-server Redis: TLS port from the server hosts only"

  ingress {
    description     = "Redis (TLS) from the server hosts"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = aws_security_group.servers[*].id
  }

  tags = { Name = "${var.name_prefix}-redis" }
}

resource "aws_elasticache_subnet_group" "redis" {
  count      = local.elasticache ? 1 : 0
  name       = "${var.name_prefix}-redis"
  subnet_ids = [local.lb_subnet_id]
}

# Like the redis host's redis.conf: when memory is full, writes fail loudly instead of
# keys being evicted (the default group's volatile-lru would drop leases and the docket's
# keys, which carry a TTL, without a word).
resource "aws_elasticache_parameter_group" "redis" {
  count  = local.elasticache ? 1 : 0
  name   = "${var.name_prefix}-redis"
  family = "redis7"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "aws_elasticache_replication_group" "redis" {
  count                      = local.elasticache ? 1 : 0
  replication_group_id       = "${var.name_prefix}-redis"
  description                = "Prefect multi-server messaging, causal ordering, leases and docket"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = "cache.t4g.micro"
  num_cache_clusters         = 1
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.redis[0].name
  parameter_group_name       = aws_elasticache_parameter_group.redis[0].name
  security_group_ids         = [aws_security_group.redis[0].id]
  transit_encryption_enabled = true
  at_rest_encryption_enabled = true
  auth_token                 = var.redis_auth_token
  apply_immediately          = true

  lifecycle {
    precondition {
      condition     = length(var.redis_auth_token) >= 16
      error_message = "redis_auth_token must be set (the stack passes its secret) for ElastiCache."
    }
  }
}
