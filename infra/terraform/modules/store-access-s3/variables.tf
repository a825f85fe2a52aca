variable "bucket_name" {
  description = "S3 bucket of the store (the configs' store: s3://<bucket>/...)."
  type        = string
}

variable "create_bucket" {
  description = "Create the bucket (private, encrypted); false grants access to an existing one."
  type        = bool
  default     = true
}

variable "read_only_bucket_names" {
  description = "Further buckets the jobs only read (datasets, checkpoints)."
  type        = list(string)
  default     = []
}

variable "namespace" {
  description = "Namespace of the jobs' Kubernetes service account."
  type        = string
}

variable "service_account_name" {
  description = "Kubernetes service account of the Ray pods and submitters (k8s/ uses discover-ray)."
  type        = string
  default     = "discover-ray"
}

variable "create_service_account" {
  # k8s/ declares the service account; its overlays carry the annotation (the output below).
  description = "Create the annotated service account here (the namespace must exist)."
  type        = bool
  default     = false
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (IRSA)."
  type        = string
}

variable "oidc_issuer_url" {
  description = "The cluster's OIDC issuer URL (with or without https://)."
  type        = string
}

variable "role_name" {
  description = "IAM role name (the k8s/ overlays' placeholder ARN names role/discover-ray)."
  type        = string
  default     = "discover-ray"
}

variable "tags" {
  description = "AWS tags."
  type        = map(string)
  default     = {}
}
