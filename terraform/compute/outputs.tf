output "instances" {
  description = "Every host: id, name, role, private IP and public IP."
  value = [for name, i in aws_instance.host : {
    id         = i.id
    name       = name
    role       = i.tags["Role"]
    private_ip = i.private_ip
    public_ip  = i.public_ip
  }]
}

output "server_name" {
  description = "Name of the Prefect server host."
  value       = local.hosts[0].name
}

output "security_group_id" {
  description = "Security group of the platform hosts."
  value       = aws_security_group.platform.id
}

output "instance_role_arns" {
  description = "ARN of each host role's IAM role (server, worker)."
  value       = { for role, r in aws_iam_role.host : role => r.arn }
}

output "data_volume_attachment" {
  description = "Where the data volume is attached: volume id, server instance id and device name."
  value = {
    volume_id   = aws_volume_attachment.data.volume_id
    instance_id = aws_volume_attachment.data.instance_id
    device_name = aws_volume_attachment.data.device_name
  }
}

output "load_balancer" {
  description = "The API's (public) load balancer in multi-server mode, the operator's (name, DNS name, target group ARN); null with one server host."
  value = local.multi_server ? {
    name             = aws_lb.api["api"].name
    dns_name         = aws_lb.api["api"].dns_name
    target_group_arn = aws_lb_target_group.api["api"].arn
  } : null
}

output "internal_load_balancer" {
  description = "The internal load balancer the hosts' clients reach the API through in multi-server mode on aws (name, DNS name, target group ARN); null with one server host and on the emulated cloud."
  value = local.internal_lb ? {
    name             = aws_lb.api["api-in"].name
    dns_name         = aws_lb.api["api-in"].dns_name
    target_group_arn = aws_lb_target_group.api["api-in"].arn
  } : null
}

output "redis_address" {
  description = "Address of the multi-server mode's Redis (ElastiCache's primary endpoint, or the redis host's name on the emulated cloud); null with one server host."
  value       = local.elasticache ? aws_elasticache_replication_group.redis[0].primary_endpoint_address : (local.redis_host ? "${var.name_prefix}-redis" : null)
}
