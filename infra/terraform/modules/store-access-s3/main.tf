# S3 access for the Ray pods through IRSA: the pods' projected service-account token is exchanged for
# short-lived credentials of this role. No access keys exist anywhere.
locals {
  issuer     = trimprefix(var.oidc_issuer_url, "https://")
  subject    = "system:serviceaccount:${var.namespace}:${var.service_account_name}"
  bucket_arn = "arn:${data.aws_partition.current.partition}:s3:::${var.bucket_name}"
  read_arns  = [for b in var.read_only_bucket_names : "arn:${data.aws_partition.current.partition}:s3:::${b}"]
}

data "aws_partition" "current" {}

resource "aws_s3_bucket" "store" {
  count  = var.create_bucket ? 1 : 0
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "store" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.store[0].id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "store" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.store[0].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "store" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.store[0].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = [local.subject]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

# Read and write the store (datasets are written once, then only read; gc deletes whole runs).
data "aws_iam_policy_document" "store" {
  statement {
    sid       = "ListStore"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [local.bucket_arn]
  }

  statement {
    sid = "ReadWriteStore"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${local.bucket_arn}/*"]
  }

  dynamic "statement" {
    for_each = length(local.read_arns) > 0 ? [1] : []
    content {
      sid       = "ReadInputs"
      actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject"]
      resources = concat(local.read_arns, [for a in local.read_arns : "${a}/*"])
    }
  }
}

resource "aws_iam_role" "store" {
  name               = var.role_name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "store" {
  name   = "store"
  role   = aws_iam_role.store.id
  policy = data.aws_iam_policy_document.store.json
}

resource "kubernetes_service_account_v1" "store" {
  count = var.create_service_account ? 1 : 0

  metadata {
    name      = var.service_account_name
    namespace = var.namespace
    annotations = {
      "eks.amazonaws.com/role-arn" = aws_iam_role.store.arn
    }
  }
}
