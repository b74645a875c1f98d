output "instances" {
  description = "Every host: id, name, role and private IP."
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

output "bucket_name" {
  description = "S3 bucket that holds flow code."
  value       = aws_s3_bucket.code.bucket
}

output "security_group_id" {
  description = "Security group of the platform hosts."
  value       = aws_security_group.platform.id
}

output "instance_role_arn" {
  description = "ARN of the hosts' IAM role."
  value       = aws_iam_role.host.arn
}
