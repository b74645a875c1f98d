"""bin/terraform-docs: the committed terraform/<module>/README.md files match what it
writes from variables.tf and outputs.tf, and its HCL reader copes with what Terraform
files hold."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bin" / "terraform-docs"


def load_script():
    loader = importlib.machinery.SourceFileLoader("terraform_docs", str(SCRIPT))
    spec = importlib.util.spec_from_loader("terraform_docs", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    loader.exec_module(module)
    return module


docs = load_script()


@pytest.mark.parametrize("module", docs.MODULES)
def test_committed_terraform_readme_matches_the_generator(module):
    path = docs.readme_path(module)
    committed = path.read_text() if path.exists() else ""
    assert committed == docs.render(module), (
        f"terraform/{module}/README.md differs from what bin/terraform-docs writes from "
        f"terraform/{module}/variables.tf and outputs.tf; run `{docs.COMMAND}` and commit the result")


@pytest.mark.parametrize("module", docs.MODULES)
def test_every_variable_and_output_is_in_the_readme(module):
    folder = docs.TERRAFORM / module
    readme = docs.render(module)
    for kind, file in (("variable", "variables.tf"), ("output", "outputs.tf")):
        names = [b.labels[0] for b in docs.read_blocks(folder / file, kind)]
        assert names, f"no {kind} found in terraform/{module}/{file}"
        for name in names:
            assert f"| `{name}` |" in readme, f"{kind} {name} of terraform/{module} is not in its README"


def test_check_mode_names_the_stale_readme_and_the_command(tmp_path, monkeypatch, capsys):
    for module in docs.MODULES:
        (tmp_path / module).mkdir()
        for name in ("variables.tf", "outputs.tf"):
            (tmp_path / module / name).write_text((docs.TERRAFORM / module / name).read_text())
        (tmp_path / module / "README.md").write_text(docs.render(module))
    monkeypatch.setattr(docs, "TERRAFORM", tmp_path)
    monkeypatch.setattr(docs, "REPO_ROOT", tmp_path)
    assert docs.main(["--check"]) == 0
    (tmp_path / "data" / "README.md").write_text("# edited by hand\n")
    assert docs.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "data/README.md" in err and docs.COMMAND in err
    assert docs.main([]) == 0
    assert docs.main(["--check"]) == 0


TRICKY = '''
# a comment with "quotes" and { braces
variable "plain" {
  description = "Has \\"escaped quotes\\", a | pipe and a ${var.x == "}" ? "a" : "b"} template."
  type        = string
  default     = "x # not a comment"
}

variable "nested" {
  /* a block comment { */
  description = <<-EOT
    Spans two
    lines.
  EOT
  type = object({
    a = optional(string, "{") # trailing comment
    b = optional(list(number), [1, 2])
  })
  default = {
    a = "}"
  }
  sensitive = true

  validation {
    condition     = length(var.nested.a) > 0
    error_message = "must not be empty }."
  }
}

variable "required_one" {
  type = map(string)
}

output "o" {
  description = "An output."
  value       = { for k, v in var.m : k => "${v}-x" }
}
'''


def test_reader_skips_strings_templates_heredocs_comments_and_nested_blocks(tmp_path):
    tf = tmp_path / "variables.tf"
    tf.write_text(TRICKY)
    variables = docs.read_blocks(tf, "variable")
    assert [v.labels[0] for v in variables] == ["plain", "nested", "required_one"]
    plain, nested, required_one = variables
    assert docs.describe(plain) == 'Has "escaped quotes", a | pipe and a ${var.x == "}" ? "a" : "b"} template.'
    assert plain.attr("default").expr == '"x # not a comment"'
    assert docs.describe(nested) == "Spans two lines. Sensitive."
    assert docs.one_line(nested.attr("type").expr) == \
        'object({ a = optional(string, "{"), b = optional(list(number), [1, 2]) })'
    assert docs.one_line(nested.attr("default").expr) == '{ a = "}" }'
    assert [b.type for b in nested.items if isinstance(b, docs.Block)] == ["validation"]
    assert required_one.attr("default") is None
    assert [o.labels[0] for o in docs.read_blocks(tf, "output")] == ["o"]


def test_table_cells_escape_pipes_and_angle_brackets():
    assert docs.cell("a | b <prefix>") == "a \\| b \\<prefix>"


def test_reader_names_file_and_line_of_what_it_cannot_read(tmp_path):
    tf = tmp_path / "variables.tf"
    tf.write_text('variable "x" {\n  description = "never closed\n}\n')
    with pytest.raises(docs.HCLError, match="line 2"):
        docs.Reader(tf.read_text(), "variables.tf").body()
