terraform {
  required_version = ">= 1.10.0" # use_lockfile: the S3 backend's own lock

  # The state lives in the stack's state bucket; bucket, key and endpoints come from a
  # backend file that stack/terraform.py generates (terraform init -backend-config=...).
  backend "s3" {}

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
  }
}
