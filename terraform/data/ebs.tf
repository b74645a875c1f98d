# The platform's database lives here, not on an instance's root volume: the nightly
# teardown destroys the instances and keeps this volume; the next bootstrap attaches it
# to the new server instance (compute/ec2.tf) and PostgreSQL finds its data again.
resource "aws_ebs_volume" "data" {
  availability_zone = var.availability_zone
  size              = var.data_volume_size
  type              = "gp3"
  encrypted         = true

  tags = {
    Name = "${var.name_prefix}-platform-data"
    Role = "platform-data"
  }
}
