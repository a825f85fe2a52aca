variable "cluster_name" {
  description = "EKS cluster the node group joins."
  type        = string
}

variable "name" {
  description = "Node group name; defaults to gpu-<gpu_type>."
  type        = string
  default     = null
}

variable "gpu_type" {
  description = "Value of the discover.ray/gpu-type node label; the k8s/ overlays select GPU nodes by it (a6000, a100)."
  type        = string
  default     = "a6000"
}

variable "instance_types" {
  # A6000-class: 48 GB of GPU memory per card. EC2 offers no RTX A6000; g6e carries the NVIDIA L40S,
  # 48 GB, the data-centre sibling of the RTX 6000 Ada (the A6000's successor), so configs sized for
  # one A6000 fit one L40S. g6e.4xlarge (1 GPU, 16 vCPU, 128 GiB) is the smallest size that holds one
  # k8s/ GPU worker (8 CPU and 48-64 GiB besides the GPU); g6e.xlarge and g6e.2xlarge cannot.
  # All types of a group must carry the same GPU count (gpus_per_node).
  description = "EC2 instance types of the group, all with gpus_per_node GPUs."
  type        = list(string)
  default     = ["g6e.4xlarge"]
}

variable "gpus_per_node" {
  description = "GPUs per instance: tells the cluster autoscaler what a node brings when the group is at zero."
  type        = number
  default     = 1
}

variable "ami_type" {
  # The EKS-optimised Amazon Linux 2023 image with the NVIDIA driver and container toolkit
  # (AL2_x86_64_GPU is end-of-life). The NVIDIA device plugin is installed separately, by the env.
  description = "EKS AMI type."
  type        = string
  default     = "AL2023_x86_64_NVIDIA"
}

variable "capacity_type" {
  description = "ON_DEMAND or SPOT."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.capacity_type)
    error_message = "capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "min_size" {
  description = "Fewest nodes; 0 lets the pool scale to zero between runs."
  type        = number
  default     = 0
}

variable "max_size" {
  description = "Most nodes."
  type        = number
  default     = 8

  validation {
    condition     = var.max_size >= 1
    error_message = "max_size must be at least 1 (an EKS node group cannot have max_size 0)."
  }
}

variable "disk_size_gb" {
  description = "Root volume size: the GPU image with torch is large, and Ray spills objects to disk."
  type        = number
  default     = 200
}

variable "subnet_ids" {
  description = "Subnets for the nodes (private; choose AZs that offer the instance types)."
  type        = list(string)
}

variable "node_role_arn" {
  description = "IAM role for the nodes; null creates one with the standard worker-node policies."
  type        = string
  default     = null
}

variable "extra_labels" {
  description = "Further Kubernetes node labels."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "AWS tags."
  type        = map(string)
  default     = {}
}
