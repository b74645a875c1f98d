# The data root module: what outlives the nightly teardown (the code bucket with its
# backups, the platform database's EBS volume). Credentials come from the usual AWS chain
# (environment, profile, SSO). On the local target, the stack writes an *_override.tf next
# to a working copy of these files that points the provider at the emulated cloud;
# nothing here knows about the emulator.
provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = var.name_prefix
      ManagedBy = "prefect-aws-stack"
    }
  }
}
