variable "project_id" {
  description = "Google Cloud project."
  type        = string
}

variable "region" {
  description = "Region of the cluster, the store bucket and the image registry."
  type        = string
  default     = "us-central1"
}

variable "gpu_zones" {
  description = "Zones of the region that offer the GPU machine types (a pool may override them)."
  type        = list(string)
  default     = ["us-central1-b"]
}

variable "cluster_name" {
  description = "GKE cluster name."
  type        = string
  default     = "discover-ray"
}

variable "release_channel" {
  description = "GKE release channel."
  type        = string
  default     = "REGULAR"
}

variable "deletion_protection" {
  description = "Refuse terraform destroy of the cluster; set false before tearing it down."
  type        = bool
  default     = true
}

variable "network" {
  description = "VPC network of the cluster (a new project has \"default\")."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "Subnetwork of the cluster in the region."
  type        = string
  default     = "default"
}

variable "system_machine_type" {
  description = "Machine type of the CPU pool (operator, Ray head pods, RayJob submitters)."
  type        = string
  default     = "e2-standard-8"
}

variable "system_min_nodes" {
  description = "Fewest CPU nodes over all zones."
  type        = number
  default     = 1
}

variable "system_max_nodes" {
  description = "Most CPU nodes over all zones (Ray heads and CPU workers of concurrent runs land here)."
  type        = number
  default     = 6
}

variable "gpu_pools" {
  # One node pool per GPU type; the key is the discover.ray/gpu-type label the k8s/ overlays select
  # (a6000 or a100). a6000-class: Google Cloud has no 48 GB card, so the RTX PRO 6000 (96 GB, the
  # A6000's own workstation line) is the default, see modules/gke-gpu-pool. a100: one A100 40 GB per
  # a2-highgpu-1g node. Both pools idle at zero nodes, and their maxima cover the largest k8s/ GPU
  # worker group (8 workers of one GPU each).
  description = "GPU node pools by GPU type."
  type = map(object({
    machine_type      = string
    accelerator_type  = string
    accelerator_count = optional(number, 1)
    disk_type         = optional(string, "pd-balanced")
    disk_size_gb      = optional(number, 200)
    min_nodes         = optional(number, 0)
    max_nodes         = number
    spot              = optional(bool, false)
    zones             = optional(list(string))
  }))
  default = {
    a6000 = {
      machine_type     = "g4-standard-48"
      accelerator_type = "nvidia-rtx-pro-6000"
      disk_type        = "hyperdisk-balanced"
      max_nodes        = 8
    }
    a100 = {
      machine_type     = "a2-highgpu-1g"
      accelerator_type = "nvidia-tesla-a100"
      max_nodes        = 8
    }
  }

  validation {
    condition     = alltrue([for p in values(var.gpu_pools) : p.min_nodes >= 0 && p.min_nodes <= p.max_nodes])
    error_message = "Each GPU pool needs 0 <= min_nodes <= max_nodes."
  }
}

variable "kuberay_version" {
  description = "KubeRay operator chart version (RayCronJob needs >= 1.6.0)."
  type        = string
  default     = "1.7.0"
}

variable "operator_namespace" {
  description = "Namespace of the KubeRay operator."
  type        = string
  default     = "kuberay-system"
}

variable "namespace" {
  description = "Namespace of the RayJobs, RayCronJobs and the discover-ray service account (the k8s/ manifests')."
  type        = string
  default     = "discover"
}

variable "store_bucket_name" {
  description = "GCS bucket of the store (globally unique); configs then use store: gs://<bucket>/<prefix>."
  type        = string
}

variable "create_store_bucket" {
  description = "Create the store bucket; false uses an existing one."
  type        = bool
  default     = true
}

variable "read_only_bucket_names" {
  description = "Further GCS buckets the jobs read (datasets, checkpoints)."
  type        = list(string)
  default     = []
}

variable "manage_service_account" {
  # k8s/ owns the namespace and the discover-ray ServiceAccount, whose overlays carry the workload
  # identity annotation: put the output service_account_annotations there. true creates both here
  # instead (then drop the overlays' annotation patch, or applying k8s/ would overwrite it).
  description = "Create the namespace and the annotated discover-ray service account with Terraform."
  type        = bool
  default     = false
}
