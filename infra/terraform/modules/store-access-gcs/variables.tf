variable "project_id" {
  description = "Google Cloud project of the bucket, the service account and the cluster's workload pool."
  type        = string
}

variable "bucket_name" {
  description = "GCS bucket of the store (the configs' store: gs://<bucket>/...)."
  type        = string
}

variable "bucket_location" {
  description = "Bucket location; keep it in the cluster's region."
  type        = string
}

variable "create_bucket" {
  description = "Create the bucket (private, uniform access); false grants access to an existing one."
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

variable "gsa_account_id" {
  description = "Account id of the Google service account the pods act as."
  type        = string
  default     = "discover-ray"
}
