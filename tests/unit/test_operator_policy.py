"""docs/operator-policy.json, the IAM policy of the operator on a real account, against
what the code and the Terraform call. A new boto3 call or Terraform resource type fails
here until the policy (or the tables below) has what it needs.

The heuristics, kept simple on purpose:

* boto3 calls. Every .py file under stack/, flows/ and blocks/ is parsed with ``ast``,
  one scope at a time: the module's top level, and each outermost function together with
  the functions nested in it. A *client* is a call ``<anything>.client(...)`` or
  ``client(...)`` with a string literal among its positional arguments, the first of which
  names the service (``aws.client(settings, "s3")``, ``boto3.client("s3", ...)``); a name
  assigned from one is a client in that scope. ``<client>.<method>(...)`` is an API call,
  also chained (``aws.client(settings, "s3").get_object(...)``), and
  ``<client>.get_paginator("x")`` is the call ``x``; ``<client>.get_waiter("x")`` is the call
  its waiter polls. Clients handed over as arguments,
  kept on objects, or made from a boto3 Session are not seen.
* Method to IAM action: botocore's service model names the operation
  (``xform_name(operation) == method``) and the service's signing name is the action's
  prefix. S3's transfer helpers (``upload_fileobj``...) are PutObject or GetObject. Where
  IAM names an action unlike the operation (HeadBucket is checked as s3:ListBucket),
  IAM_NAMES says so; a method the model does not know fails the test.
* A policy allows an action when one of its Allow statements lists it, exactly or by a
  ``*``/``?`` glob (fnmatch, case-insensitive as in IAM). Conditions are not evaluated.
* Terraform: ``resource "TYPE"`` and ``data "TYPE"`` in terraform/*/*.tf. TERRAFORM_ACTIONS
  keeps, per type, a handful of actions it cannot do without (not all it calls: the
  policy is more generous, for the provider's refresh); a type without an entry fails.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "docs" / "operator-policy.json"
SCANNED = ("stack", "flows", "blocks")
# Calls only the twin makes (stack/localcloud/), never on aws: the policy does not grant them.
TWIN_ONLY = {("ec2", "register_image")}  # an AMI the emulator forgot when it restarted
MANAGED_POLICY_MAX_CHARS = 6144  # IAM's quota for a managed policy, whitespace not counted

# S3's transfer manager methods: not operations of the model.
TRANSFER = {
    "upload_file": ["s3:PutObject", "s3:AbortMultipartUpload"],
    "upload_fileobj": ["s3:PutObject", "s3:AbortMultipartUpload"],
    "download_file": ["s3:GetObject"],
    "download_fileobj": ["s3:GetObject"],
    "copy": ["s3:GetObject", "s3:PutObject"],
}

# Operations whose IAM action is named otherwise.
IAM_NAMES = {
    "s3:HeadBucket": ["s3:ListBucket"],
    "s3:HeadObject": ["s3:GetObject"],
    "s3:CopyObject": ["s3:GetObject", "s3:PutObject"],  # IAM checks a copy as a read and a write
    "s3:ListObjects": ["s3:ListBucket"],
    "s3:ListObjectsV2": ["s3:ListBucket"],
    "s3:ListObjectVersions": ["s3:ListBucketVersions"],
    "s3:DeleteObjects": ["s3:DeleteObject", "s3:DeleteObjectVersion"],  # the code deletes versions
    "s3:GetBucketEncryption": ["s3:GetEncryptionConfiguration"],
    "s3:PutBucketEncryption": ["s3:PutEncryptionConfiguration"],
    "s3:GetPublicAccessBlock": ["s3:GetBucketPublicAccessBlock"],
    "s3:PutPublicAccessBlock": ["s3:PutBucketPublicAccessBlock"],
    "s3:GetBucketLifecycleConfiguration": ["s3:GetLifecycleConfiguration"],
    "s3:PutBucketLifecycleConfiguration": ["s3:PutLifecycleConfiguration"],
}

# Per Terraform type, what it cannot do without (create, read, delete, and what it passes).
TERRAFORM_ACTIONS = {
    "aws_instance": ["ec2:RunInstances", "ec2:DescribeInstances", "ec2:DescribeInstanceAttribute",
                     "ec2:DescribeInstanceTypes", "ec2:DescribeVolumes", "ec2:CreateTags",
                     "ec2:TerminateInstances", "ec2:ModifyInstanceAttribute", "iam:PassRole",
                     # a change of its security groups (multi-server mode's servers group)
                     "ec2:ModifyNetworkInterfaceAttribute"],
    "aws_ebs_volume": ["ec2:CreateVolume", "ec2:DescribeVolumes", "ec2:DeleteVolume", "ec2:CreateTags"],
    "aws_volume_attachment": ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:DescribeVolumes",
                              "ec2:StopInstances"],  # stop_instance_before_detaching
    "aws_security_group": ["ec2:CreateSecurityGroup", "ec2:DescribeSecurityGroups",
                           "ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
                           "ec2:DeleteSecurityGroup"],
    "aws_key_pair": ["ec2:ImportKeyPair", "ec2:DescribeKeyPairs", "ec2:DeleteKeyPair"],
    "aws_iam_role": ["iam:CreateRole", "iam:GetRole", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies",
                     "iam:ListInstanceProfilesForRole", "iam:TagRole", "iam:DeleteRole"],
    "aws_iam_instance_profile": ["iam:CreateInstanceProfile", "iam:GetInstanceProfile",
                                 "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                                 "iam:DeleteInstanceProfile", "iam:PassRole"],
    "aws_iam_role_policy": ["iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy"],
    "aws_s3_bucket": ["s3:CreateBucket", "s3:ListBucket", "s3:GetBucketPolicy", "s3:GetBucketAcl",
                      "s3:GetBucketCORS", "s3:GetBucketWebsite", "s3:GetBucketVersioning",
                      "s3:GetAccelerateConfiguration", "s3:GetBucketRequestPayment", "s3:GetBucketLogging",
                      "s3:GetLifecycleConfiguration", "s3:GetReplicationConfiguration",
                      "s3:GetEncryptionConfiguration", "s3:GetBucketObjectLockConfiguration",
                      "s3:GetBucketTagging", "s3:PutBucketTagging", "s3:DeleteBucket"],
    "aws_s3_bucket_versioning": ["s3:PutBucketVersioning", "s3:GetBucketVersioning"],
    "aws_s3_bucket_server_side_encryption_configuration": ["s3:PutEncryptionConfiguration",
                                                           "s3:GetEncryptionConfiguration"],
    "aws_s3_bucket_public_access_block": ["s3:PutBucketPublicAccessBlock", "s3:GetBucketPublicAccessBlock"],
    "aws_s3_bucket_policy": ["s3:PutBucketPolicy", "s3:GetBucketPolicy", "s3:DeleteBucketPolicy"],
    "aws_ssm_association": ["ssm:CreateAssociation", "ssm:DescribeAssociation", "ssm:DeleteAssociation"],
    "aws_subnet": ["ec2:DescribeSubnets"],  # STACK_SUBNET_ID's VPC
    "aws_ecr_repository": ["ecr:CreateRepository", "ecr:DescribeRepositories", "ecr:ListTagsForResource",
                           "ecr:TagResource", "ecr:DeleteRepository"],
    # Multi-server mode (terraform/compute/multiserver.tf). The first balancer or cache of
    # an account makes its service's linked role, with the caller's permission.
    "aws_lb": ["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:DescribeLoadBalancers",
               "elasticloadbalancing:DescribeLoadBalancerAttributes", "elasticloadbalancing:SetSecurityGroups",
               "elasticloadbalancing:AddTags", "elasticloadbalancing:DescribeTags",
               "elasticloadbalancing:DeleteLoadBalancer", "iam:CreateServiceLinkedRole"],
    "aws_lb_target_group": ["elasticloadbalancing:CreateTargetGroup", "elasticloadbalancing:DescribeTargetGroups",
                            "elasticloadbalancing:DescribeTargetGroupAttributes",
                            "elasticloadbalancing:ModifyTargetGroupAttributes",
                            "elasticloadbalancing:DeleteTargetGroup"],
    "aws_lb_target_group_attachment": ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets",
                                       "elasticloadbalancing:DescribeTargetHealth"],
    "aws_lb_listener": ["elasticloadbalancing:CreateListener", "elasticloadbalancing:DescribeListeners",
                        "elasticloadbalancing:DeleteListener"],
    "aws_elasticache_subnet_group": ["elasticache:CreateCacheSubnetGroup", "elasticache:DescribeCacheSubnetGroups",
                                     "elasticache:DeleteCacheSubnetGroup"],
    "aws_elasticache_parameter_group": ["elasticache:CreateCacheParameterGroup",
                                        "elasticache:DescribeCacheParameterGroups",
                                        "elasticache:DescribeCacheParameters",
                                        "elasticache:ModifyCacheParameterGroup",
                                        "elasticache:DeleteCacheParameterGroup"],
    "aws_elasticache_replication_group": ["elasticache:CreateReplicationGroup",
                                          "elasticache:DescribeReplicationGroups",
                                          "elasticache:DeleteReplicationGroup", "elasticache:DescribeCacheClusters",
                                          "iam:CreateServiceLinkedRole"],
    "aws_ecr_lifecycle_policy": ["ecr:PutLifecyclePolicy", "ecr:GetLifecyclePolicy", "ecr:DeleteLifecyclePolicy"],
    # Computed by Terraform or the provider without an AWS call.
    "aws_iam_policy_document": [],
    "aws_partition": [],
    "terraform_data": [],
}

# What the S3 backend does with the state and its lock file (use_lockfile).
S3_BACKEND_ACTIONS = ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
# What the aws_ec2 inventory plugin calls (DescribeRegions only when no region is given).
INVENTORY_ACTIONS = ["ec2:DescribeInstances", "ec2:DescribeRegions"]
TF_BLOCK = re.compile(r'^\s*(?:resource|data)\s+"([A-Za-z0-9_]+)"', re.MULTILINE)


def load_policy() -> dict:
    return json.loads(POLICY_FILE.read_text())


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allows(policy: dict, action: str, resource: str | None = None) -> bool:
    """Some Allow statement lists ``action`` (and, when given, a pattern matching ``resource``)."""
    for st in policy["Statement"]:
        if st["Effect"] != "Allow":
            continue
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in as_list(st["Action"])):
            continue
        if resource is None or any(fnmatch.fnmatchcase(resource, r) for r in as_list(st["Resource"])):
            return True
    return False


# --- boto3 calls ------------------------------------------------------------------------

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def client_service(node: ast.AST) -> str | None:
    """The service of a ``client(...)`` call, or None when ``node`` is no such call."""
    if not isinstance(node, ast.Call):
        return None
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    if name != "client":
        return None
    return next((a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)), None)


def scopes(tree: ast.Module) -> list[list[ast.AST]]:
    """The nodes of the module's top level, and of each outermost function (nested ones included)."""
    top: list[ast.AST] = []
    outermost: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, FUNCTIONS):
                outermost.append(child)
            else:
                top.append(child)
                visit(child)

    visit(tree)
    return [top] + [list(ast.walk(f)) for f in outermost]


def boto3_calls(source: str) -> set[tuple[str, str]]:
    """(service, method) of every API call ``source`` makes on a boto3 client."""
    calls = set()
    for nodes in scopes(ast.parse(source)):
        clients = {}
        for node in nodes:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and (service := client_service(node.value)):
                for target in getattr(node, "targets", [getattr(node, "target", None)]):
                    if isinstance(target, ast.Name):
                        clients[target.id] = service
        for node in nodes:
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            service = clients.get(receiver.id) if isinstance(receiver, ast.Name) else client_service(receiver)
            if service is None:
                continue
            method = node.func.attr
            if method == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                method = node.args[0].value
            elif method == "get_waiter" and node.args and isinstance(node.args[0], ast.Constant):
                # A waiter polls one operation (instance_running: DescribeInstances).
                waiter = botocore.session.get_session().get_waiter_model(service).get_waiter(
                    "".join(w.capitalize() for w in node.args[0].value.split("_")))
                method = xform_name(waiter.operation)
            calls.add((service, method))
    return calls


_session = botocore.session.get_session()


def iam_actions(service: str, method: str) -> list[str]:
    """The IAM actions a boto3 ``method`` of ``service`` needs."""
    if service == "s3" and method in TRANSFER:
        return TRANSFER[method]
    model = _session.get_service_model(service)
    operations = {xform_name(op): op for op in model.operation_names}
    if method not in operations:
        raise ValueError(f"{service}.{method} is no operation of botocore's {service} model; "
                         "map it in tests/unit/test_operator_policy.py (TRANSFER)")
    action = f"{model.signing_name}:{operations[method]}"
    return IAM_NAMES.get(action, [action])


def missing_actions(policy: dict, calls: set[tuple[str, str]]) -> list[str]:
    """``service.method -> action`` for each action of ``calls`` the policy does not allow."""
    return sorted(f"{service}.{method} -> {action}" for service, method in calls
                  for action in iam_actions(service, method) if not allows(policy, action))


def code_calls() -> set[tuple[str, str]]:
    calls = set()
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            calls |= boto3_calls(path.read_text())
    return calls - TWIN_ONLY


# --- the tests --------------------------------------------------------------------------

def test_the_policy_is_an_iam_policy_document():
    policy = load_policy()
    assert policy["Version"] == "2012-10-17"
    assert isinstance(policy["Statement"], list) and policy["Statement"]
    sids = [st.get("Sid") for st in policy["Statement"]]
    assert all(re.fullmatch(r"[A-Za-z0-9]+", sid or "") for sid in sids), sids
    assert len(set(sids)) == len(sids), "Sids must be unique"
    for st in policy["Statement"]:
        assert set(st) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, st["Sid"]
        assert st["Effect"] == "Allow", st["Sid"]
        assert st["Action"] and all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9*?]+", a) for a in as_list(st["Action"]))
        assert st["Resource"] and all(r == "*" or r.startswith("arn:") for r in as_list(st["Resource"]))
    size = len("".join(POLICY_FILE.read_text().split()))
    assert size <= MANAGED_POLICY_MAX_CHARS, f"{size} characters: too long for one managed policy"


def test_the_policy_grants_no_whole_service():
    for st in load_policy()["Statement"]:
        for action in as_list(st["Action"]):
            assert action != "*" and not action.endswith(":*"), f"{st['Sid']}: {action}"


def test_the_scan_finds_assigned_chained_and_paginated_calls():
    source = '''
def f(settings):
    s3 = aws.client(settings, "s3")
    s3.head_bucket(Bucket="b")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket="b"):
        pass
    def nested():
        s3.delete_objects(Bucket="b", Delete={})
    aws.client(settings, "sts").get_caller_identity()

def g():
    s3 = something_else()
    s3.head_bucket()  # not a client here
    boto3.client("ec2", region_name="us-east-1").describe_volumes()
'''
    assert boto3_calls(source) == {("s3", "head_bucket"), ("s3", "list_object_versions"),
                                   ("s3", "delete_objects"), ("sts", "get_caller_identity"),
                                   ("ec2", "describe_volumes")}


def test_a_call_the_policy_lacks_is_reported():
    source = '''
def rotate(settings):
    sm = aws.client(settings, "secretsmanager")
    sm.get_secret_value(SecretId="p/x")
    sm.rotate_secret(SecretId="p/x")
'''
    assert missing_actions(load_policy(), boto3_calls(source)) == [
        "secretsmanager.rotate_secret -> secretsmanager:RotateSecret"]


def test_the_policy_allows_every_boto3_call_of_the_code():
    calls = code_calls()
    # The scan still sees the code's clients (it would pass on nothing otherwise).
    assert {("s3", "head_bucket"), ("secretsmanager", "get_secret_value"), ("ec2", "describe_instances"),
            ("sts", "get_caller_identity")} <= calls, sorted(calls)
    assert missing_actions(load_policy(), calls) == []


def test_the_policy_allows_what_each_terraform_type_needs():
    found = {t for path in sorted(REPO.glob("terraform/*/*.tf")) for t in TF_BLOCK.findall(path.read_text())}
    assert found, "no resource or data block found in terraform/*/*.tf"
    unknown = sorted(found - set(TERRAFORM_ACTIONS))
    assert not unknown, (f"Terraform types without an entry in TERRAFORM_ACTIONS: {unknown}; add the actions "
                         "each needs there and to docs/operator-policy.json")
    policy = load_policy()
    needed = {a for t in found for a in TERRAFORM_ACTIONS[t]} | set(S3_BACKEND_ACTIONS) | set(INVENTORY_ACTIONS)
    assert sorted(a for a in needed if not allows(policy, a)) == []


def test_the_scoped_statements_reach_the_stack_own_names(monkeypatch):
    from stack import accountlease, accountsecrets, statebackend
    from stack.settings import StackSettings

    monkeypatch.setattr(statebackend, "read_state", lambda settings, root: None)  # a new stack's names

    s = StackSettings(target="aws", operator_cidr="203.0.113.7/32", ami_id="ami-12345678",
                      name_prefix="prefect2", region="eu-west-1", bucket_name=None, state_bucket=None)
    policy = load_policy()
    state = f"arn:aws:s3:::{statebackend.state_bucket_name(s)}"
    code = f"arn:aws:s3:::{statebackend.code_bucket_name(s)}"
    expected = [(a, b) for b in (state, code) for a in ("s3:CreateBucket", "s3:ListBucket", "s3:ListBucketVersions",
                                                        "s3:PutBucketPolicy", "s3:DeleteBucket")]
    for key in (statebackend.state_key(s, "data"), statebackend.state_key(s, "data") + ".tflock",
                accountlease.lease_key(s)):
        expected += [(a, f"{state}/{key}") for a in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")]
    expected += [(a, f"{code}/backups/x.dump") for a in ("s3:GetObject", "s3:DeleteObjectVersion")]
    expected += [("s3:PutObject", f"{code}/testflow/testflow.py")]
    for name in accountsecrets.ALL:
        arn = f"arn:aws:secretsmanager:{s.region}:123456789012:secret:{accountsecrets.secret_id(s, name)}-AbC123"
        expected += [(a, arn) for a in ("secretsmanager:CreateSecret", "secretsmanager:GetSecretValue",
                                        "secretsmanager:DeleteSecret")]
    for role in ("server", "worker", "api"):  # terraform/compute/iam.tf: <prefix>-<region>-<role>
        name = f"{s.name_prefix}-{s.region}-{role}"
        expected += [(a, f"arn:aws:iam::123456789012:role/{name}") for a in ("iam:CreateRole", "iam:PassRole")]
        expected += [("iam:CreateInstanceProfile", f"arn:aws:iam::123456789012:instance-profile/{name}")]
    assert [(a, r) for a, r in expected if not allows(policy, a, r)] == []
    # The scope is the stack's: another bucket, secret or role is not reached.
    assert not allows(policy, "s3:GetObject", "arn:aws:s3:::someone-elses-bucket/key")
    assert not allows(policy, "secretsmanager:GetSecretValue",
                      "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-password-AbC123")
    assert not allows(policy, "iam:PassRole", "arn:aws:iam::123456789012:role/OrganizationAccountAccessRole")


def test_the_policy_creates_the_linked_roles_of_the_load_balancer_and_elasticache_only():
    policy = load_policy()
    linked = [st for st in policy["Statement"] if "iam:CreateServiceLinkedRole" in as_list(st["Action"])]
    assert len(linked) == 1 and as_list(linked[0]["Action"]) == ["iam:CreateServiceLinkedRole"]
    # allows() does not evaluate conditions: this one is what scopes the statement.
    assert linked[0]["Condition"] == {"StringEquals": {"iam:AWSServiceName": [
        "elasticloadbalancing.amazonaws.com", "elasticache.amazonaws.com"]}}
    for service, role in (("elasticloadbalancing.amazonaws.com", "AWSServiceRoleForElasticLoadBalancing"),
                          ("elasticache.amazonaws.com", "AWSServiceRoleForElastiCache")):
        assert allows(policy, "iam:CreateServiceLinkedRole", f"arn:aws:iam::123456789012:role/aws-service-role/"
                                                              f"{service}/{role}")
    assert not allows(policy, "iam:CreateServiceLinkedRole", "arn:aws:iam::123456789012:role/prefect2-server")


@pytest.mark.parametrize("service, method, expected", [
    ("s3", "head_bucket", ["s3:ListBucket"]),
    ("s3", "download_fileobj", ["s3:GetObject"]),
    ("secretsmanager", "create_secret", ["secretsmanager:CreateSecret"]),
])
def test_methods_map_to_iam_actions(service, method, expected):
    assert iam_actions(service, method) == expected
