# Credentials come from the usual AWS chain (environment, profile, SSO). On the local
# target, the stack writes an *_override.tf next to a working copy of these files that
# points the provider at the emulated cloud; nothing here knows about the emulator.
provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = var.name_prefix
      ManagedBy = "prefect-aws-stack"
    }
  }
}
