variable "region" {
  description = "AWS region of every resource."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like us-east-1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name and value of the Project tag."
  type        = string
  default     = "prefect2"

  validation {
    # Single '-' between letters and digits: AWS refuses "--" in an ElastiCache id; and a
    # load balancer named "internal-...". As stack/settings.py checks it.
    condition = (length(var.name_prefix) <= 20 && can(regex("^[a-z](-?[a-z0-9])+$", var.name_prefix))
    && !can(regex("^internal(-|$)", var.name_prefix)))
    error_message = "name_prefix must be 2-20 lowercase letters, digits or single '-' between them, starting with a letter, not 'internal' nor 'internal-...'."
  }
}

variable "availability_zone" {
  description = "Availability zone of the data volume; the server instance is placed in the same one."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", var.availability_zone))
    error_message = "availability_zone must look like us-east-1a."
  }
}

variable "data_volume_size" {
  description = "Size in GiB of the EBS volume that holds the platform's PostgreSQL database."
  type        = number
  default     = 10

  validation {
    condition     = var.data_volume_size >= 1 && var.data_volume_size <= 16384
    error_message = "data_volume_size must be from 1 to 16384 GiB."
  }
}

variable "bucket_name" {
  description = "Name of the S3 bucket that holds flow code and the platform's backups."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 lowercase letters, digits, '-', '.')."
  }
}

variable "bucket_force_destroy" {
  description = "Let Terraform delete the bucket with its objects. Off: teardown --all empties the bucket itself, after its question, so no apply can delete the backups."
  type        = bool
  default     = false
}

variable "bucket_tls_only" {
  description = "Deny every request to the code bucket that does not use TLS. Only the emulated cloud, which speaks plain HTTP and enforces bucket policies, turns it off."
  type        = bool
  default     = true
}

variable "flow_runner_images_kept" {
  description = "How many flow-runner images the repository keeps (older ones expire)."
  type        = number
  default     = 5

  validation {
    condition     = var.flow_runner_images_kept >= 2 && var.flow_runner_images_kept <= 100
    error_message = "flow_runner_images_kept must be between 2 and 100: the current image and the one a rollback returns to."
  }
}
