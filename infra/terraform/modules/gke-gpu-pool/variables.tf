variable "project_id" {
  description = "Google Cloud project."
  type        = string
}

variable "cluster" {
  description = "GKE cluster id or name the pool joins."
  type        = string
}

variable "location" {
  description = "The cluster's location (region or zone)."
  type        = string
}

variable "node_locations" {
  description = "Zones for the pool's nodes (GPU types are offered in some zones only); empty keeps the cluster's."
  type        = list(string)
  default     = []
}

variable "name" {
  description = "Node pool name; defaults to gpu-<gpu_type>."
  type        = string
  default     = null
}

variable "gpu_type" {
  description = "Value of the discover.ray/gpu-type node label; the k8s/ overlays select GPU nodes by it (a6000, a100)."
  type        = string
  default     = "a6000"
}

variable "accelerator_type" {
  # A6000-class, at least 48 GB of GPU memory per card. Google Cloud offers no 48 GB card (L4 has 24 GB,
  # A100 40 or 80 GB), so the default is the RTX PRO 6000 (96 GB), the current card of the A6000's own
  # RTX workstation line: every config sized for one A6000 fits it. A cheaper, smaller alternative is
  # nvidia-tesla-a100 on a2-highgpu-1g (40 GB: lower batch sizes).
  description = "GKE accelerator type."
  type        = string
  default     = "nvidia-rtx-pro-6000"
}

variable "accelerator_count" {
  description = "GPUs per node (fixed by the machine type for A2, G2 and G4 machines)."
  type        = number
  default     = 1
}

variable "machine_type" {
  description = "Machine type matching accelerator_type and accelerator_count (g4-standard-48 carries one RTX PRO 6000)."
  type        = string
  default     = "g4-standard-48"
}

variable "gpu_driver_version" {
  # torch's CUDA 13 wheels (requirements.lock) need an R580 or newer driver.
  description = "GPU driver GKE installs: LATEST or DEFAULT."
  type        = string
  default     = "LATEST"
}

variable "min_nodes" {
  description = "Fewest nodes over all zones; 0 lets the pool scale to zero between runs."
  type        = number
  default     = 0
}

variable "max_nodes" {
  description = "Most nodes over all zones."
  type        = number
  default     = 8
}

variable "spot" {
  description = "Use Spot VMs (cheaper, may be preempted: Ray retries the lost tasks)."
  type        = bool
  default     = false
}

variable "disk_type" {
  description = "Boot disk type (G4 machines take Hyperdisk only; A2 takes pd-balanced)."
  type        = string
  default     = "hyperdisk-balanced"
}

variable "disk_size_gb" {
  description = "Boot disk size: the GPU image with torch is large, and Ray spills objects to disk."
  type        = number
  default     = 200
}

variable "service_account" {
  description = "Node service account email (least-privilege: logging, monitoring, image pulls)."
  type        = string
}

variable "extra_labels" {
  description = "Further Kubernetes node labels."
  type        = map(string)
  default     = {}
}
