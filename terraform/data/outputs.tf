output "bucket_name" {
  description = "S3 bucket that holds flow code and backups/."
  value       = aws_s3_bucket.code.bucket
}

output "bucket_arn" {
  description = "ARN of the code bucket."
  value       = aws_s3_bucket.code.arn
}

output "data_volume" {
  description = "The platform database's EBS volume: id, Name tag, size (GiB) and availability zone."
  value = {
    id                = aws_ebs_volume.data.id
    name              = aws_ebs_volume.data.tags["Name"]
    size              = aws_ebs_volume.data.size
    availability_zone = aws_ebs_volume.data.availability_zone
  }
}

output "flow_runner_repository" {
  description = "The flow-runner image's ECR repository: url (where configure pushes and the worker hosts pull) and arn."
  value = {
    url = aws_ecr_repository.flow_runner.repository_url
    arn = aws_ecr_repository.flow_runner.arn
  }
}
