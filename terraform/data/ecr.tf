# The flow-runner image's repository: the Docker pool's image, pushed by configure and
# pulled by the worker hosts (their role may pull from this repository only). It lives
# with the data, not the compute: the nightly teardown keeps it, so the morning's
# bootstrap pushes nothing when the image did not change. Tags are content hashes and
# immutable, so a tag always names what it was built from.
resource "aws_ecr_repository" "flow_runner" {
  name                 = "${var.name_prefix}/flow-runner"
  image_tag_mutability = "IMMUTABLE"
  # Deleting the data module (teardown --all, which names the repository in its
  # confirmation) deletes the images: the stack's own are rebuilt from the repository's
  # files; one you pushed yourself, you push again.
  force_delete = true

  encryption_configuration {
    encryption_type = "AES256"
  }
  tags = { Name = "${var.name_prefix}/flow-runner" }
}

# Each configure that changed the image pushes one; the pool uses the newest. Older ones
# go, all but the last few (a rollback's image among them).
resource "aws_ecr_lifecycle_policy" "flow_runner" {
  repository = aws_ecr_repository.flow_runner.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the last ${var.flow_runner_images_kept} images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = var.flow_runner_images_kept
      }
      action = { type = "expire" }
    }]
  })
}
