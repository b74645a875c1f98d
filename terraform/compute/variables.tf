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
  description = "Prefix of every resource name and value of the Project tag. Hosts are <prefix>-ec2-N."
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

variable "instance_type" {
  description = "EC2 instance type of the server and worker hosts."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like t3.small."
  }
}

variable "ami_id" {
  description = "AMI of new hosts (a Debian or Ubuntu image of the region, or the stack's bake of one). Running hosts keep theirs."
  type        = string

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0abcdef1234567890."
  }
}

variable "worker_count" {
  description = "Number of worker hosts."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_count >= 1 && var.worker_count <= 10 && floor(var.worker_count) == var.worker_count
    error_message = "worker_count must be a whole number from 1 to 10."
  }
}

variable "server_count" {
  description = "Number of Prefect API server hosts. 1: the server host runs everything. 2 to 5: Prefect's multi-server mode behind a load balancer (multiserver.tf)."
  type        = number
  default     = 1

  validation {
    condition     = var.server_count >= 1 && var.server_count <= 5 && floor(var.server_count) == var.server_count
    error_message = "server_count must be a whole number from 1 to 5."
  }
}

variable "redis_host" {
  description = "Multi-server mode's Redis on a host of the stack (Debian's redis-server, TLS and a password) instead of ElastiCache: the emulated cloud's ElastiCache keeps no clusters."
  type        = bool
  default     = false
}

variable "enable_internal_load_balancer" {
  description = "Multi-server mode: also an internal network load balancer (<prefix>-api-in) that the hosts' clients use; the public one's DNS name resolves to public IPs even inside the VPC, where the hosts' self rule does not apply. The emulated cloud turns it off: its twin runs only the <prefix>-api balancer."
  type        = bool
  default     = true
}

variable "redis_auth_token" {
  description = "AUTH token of the multi-server mode's Redis (a stack secret in Secrets Manager). Empty with server_count 1."
  type        = string
  default     = ""
  sensitive   = true

  validation {
    condition     = var.redis_auth_token == "" || length(var.redis_auth_token) >= 16
    error_message = "redis_auth_token must be at least 16 characters (ElastiCache's minimum)."
  }
}

variable "operator_cidr" {
  description = "CIDR allowed to reach the Prefect API (4200) and SSH (22)."
  type        = string

  validation {
    condition     = can(cidrnetmask(var.operator_cidr))
    error_message = "operator_cidr must be an IPv4 CIDR block such as 203.0.113.7/32."
  }

  validation {
    condition     = var.operator_cidr != "0.0.0.0/0" || var.allow_public_api
    error_message = "operator_cidr 0.0.0.0/0 opens the Prefect API to the internet; set allow_public_api = true to accept that."
  }
}

variable "allow_public_api" {
  description = "Explicit opt-in: also open the Prefect API (4200) to 0.0.0.0/0. Off by default."
  type        = bool
  default     = false
}

variable "flow_code_prefix" {
  description = "Folder of the code bucket that holds the flow code: all that worker hosts (and their flow runs) may read."
  type        = string
  default     = "testflow"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*$", var.flow_code_prefix)) && var.flow_code_prefix != "backups"
    error_message = "flow_code_prefix must be one folder name (letters, digits, '.', '_', '-'), not backups."
  }
}

variable "bucket_arn" {
  description = "ARN of the code bucket (an output of the data root module): the worker role may list and read its flow code prefix, the server role write its backups/."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_arn))
    error_message = "bucket_arn must be an S3 bucket ARN such as arn:aws:s3:::my-bucket."
  }
}

variable "flow_runner_repository_arn" {
  description = "ARN of the flow-runner image's ECR repository (an output of the data root module): the worker role may pull from it."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecr:[a-z0-9-]+:[0-9]{12}:repository/[a-z0-9._/-]+$", var.flow_runner_repository_arn))
    error_message = "flow_runner_repository_arn must be an ECR repository ARN such as arn:aws:ecr:us-east-1:123456789012:repository/prefect2/flow-runner."
  }
}

variable "availability_zone" {
  description = "Availability zone of every host: the data volume's zone (an output of the data root module)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$", var.availability_zone))
    error_message = "availability_zone must look like us-east-1a."
  }
}

variable "data_volume_id" {
  description = "EBS volume of the platform database (an output of the data root module), attached to the server."
  type        = string

  validation {
    condition     = can(regex("^vol-[0-9a-f]{8,17}$", var.data_volume_id))
    error_message = "data_volume_id must look like vol-0123456789abcdef0."
  }
}

variable "data_device_name" {
  description = "Device name the data volume is attached as (on Nitro instances it shows up as an NVMe device, which the role finds by volume id; on Xen ones as /dev/xvdf)."
  type        = string
  default     = "/dev/sdf"
}

variable "host_image_version" {
  description = "Version of what the hosts boot when that is not the AMI (the emulated cloud's host image). A change replaces the instances (a new AMI does not); the data volume is re-attached."
  type        = string
  default     = ""
}

variable "ssh_public_key" {
  description = "OpenSSH public key installed as the hosts' key pair."
  type        = string

  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256) ", var.ssh_public_key))
    error_message = "ssh_public_key must be an OpenSSH public key line."
  }
}

variable "metadata_options" {
  description = "Instance metadata service settings. Hop limit 2 lets containers on a host use the instance role with IMDSv2."
  type = object({
    http_endpoint               = optional(string, "enabled")
    http_tokens                 = optional(string, "required")
    http_put_response_hop_limit = optional(number, 2)
  })
  default = {}

  validation {
    condition     = var.metadata_options.http_tokens == "required"
    error_message = "metadata_options.http_tokens must be \"required\" (IMDSv2 only)."
  }
}

variable "root_volume_size" {
  description = "Root volume size of each host in GiB."
  type        = number
  default     = 20

  validation {
    condition     = var.root_volume_size >= 8
    error_message = "root_volume_size must be at least 8 GiB."
  }
}

variable "enable_ssm_association" {
  description = "Create an SSM association that keeps the SSM agent updated. Off by default: the emulated cloud does not implement it."
  type        = bool
  default     = false
}

variable "install_ssm_agent" {
  description = "Install the SSM agent from the region's S3 bucket at first boot (the instances' user_data). The emulated cloud's hosts turn it off: they reach no AWS download."
  type        = bool
  default     = true
}

variable "instance_initiated_shutdown_behavior" {
  description = "What a host's own poweroff does to its instance: stop (the safety stop: no compute billed, disks kept; the next bootstrap starts it). Null leaves EC2's default, which is stop for EBS-backed instances; the emulated cloud passes null (see stack/terraform.py)."
  type        = string
  default     = "stop"
  validation {
    condition     = var.instance_initiated_shutdown_behavior == null || var.instance_initiated_shutdown_behavior == "stop"
    error_message = "instance_initiated_shutdown_behavior: only stop (or null) keeps the hosts' disks when they power themselves off."
  }
}

variable "subnet_id" {
  description = "Subnet of every host, for an account or region without a default VPC (it must be in availability_zone and route to the internet; the hosts get public IPs). Null: the default VPC's subnet of availability_zone."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "subnet_id must look like subnet-0123456789abcdef0."
  }
}
