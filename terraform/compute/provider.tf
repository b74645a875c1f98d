# The compute root module: what the nightly teardown destroys (instances, security
# group, key pair, instance role, the data volume's attachment). It takes the data root
# module's outputs as variables. Credentials come from the usual AWS chain; on the local
# target a generated *_override.tf points the provider at the emulated cloud.
provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = var.name_prefix
      ManagedBy = "prefect-aws-stack"
    }
  }
}
