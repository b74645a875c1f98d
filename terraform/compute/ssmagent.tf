# The instances' user_data, which cloud-init runs at first boot (on the emulated cloud
# too, from the NoCloud seed of stack/localcloud/hosts.py): it installs the SSM agent
# (Debian and Ubuntu AMIs do not ship it), so hosts can be reached with Session Manager
# instead of SSH. The emulated cloud's hosts skip the download (install_ssm_agent).
locals {
  ssm_agent_user_data = <<-EOT
    #!/bin/bash
    set -eu
    install_ssm_agent=${var.install_ssm_agent}
    if [ "$install_ssm_agent" != true ]; then
      echo "user_data: the SSM agent is not installed here (install_ssm_agent = false)"
    elif ! systemctl is-active --quiet amazon-ssm-agent snap.amazon-ssm-agent.amazon-ssm-agent; then
      if command -v snap >/dev/null; then
        snap install amazon-ssm-agent --classic
      else
        arch=$(dpkg --print-architecture)
        curl -fsSLo /tmp/ssm.deb "https://s3.${var.region}.amazonaws.com/amazon-ssm-${var.region}/latest/debian_$${arch}/amazon-ssm-agent.deb"
        dpkg -i /tmp/ssm.deb
      fi
    fi
  EOT
}

# Keeps the agent updated. Behind a flag: moto does not implement SSM associations.
resource "aws_ssm_association" "update_agent" {
  count = var.enable_ssm_association ? 1 : 0

  name = "AWS-UpdateSSMAgent"
  targets {
    key    = "tag:Project"
    values = [var.name_prefix]
  }
  schedule_expression = "rate(14 days)"
}
