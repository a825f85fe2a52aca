variable "region" {
  description = "AWS region (one that offers the GPU instance types, e.g. us-east-1, us-east-2, us-west-2)."
  type        = string
  default     = "us-east-1"
}

variable "cluster_name" {
  description = "EKS cluster name."
  type        = string
  default     = "discover-ray"
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (keep cluster_autoscaler_chart_version's autoscaler on the same minor)."
  type        = string
  default     = "1.35"
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC."
  type        = string
  default     = "10.0.0.0/16"
}

variable "api_allowed_cidrs" {
  description = "CIDRs that may reach the public Kubernetes API endpoint; narrow it to your network."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "system_instance_types" {
  description = "Instance types of the CPU pool (operator, autoscaler, Ray head pods, RayJob submitters)."
  type        = list(string)
  default     = ["m6i.2xlarge"]
}

variable "system_min_size" {
  description = "Fewest CPU nodes."
  type        = number
  default     = 1
}

variable "system_max_size" {
  description = "Most CPU nodes (Ray heads and CPU workers of concurrent runs land here)."
  type        = number
  default     = 6
}

variable "gpu_pools" {
  # One managed node group per GPU type; the key is the discover.ray/gpu-type label the k8s/ overlays
  # select (a6000 or a100). a6000-class: g6e.4xlarge (NVIDIA L40S, 48 GB), see modules/eks-gpu-pool;
  # a100: EC2 sells A100s only eight at a time (p4d.24xlarge, 8 x 40 GB). Both pools idle at zero nodes,
  # and their maxima cover the largest k8s/ GPU worker group (8 workers of one GPU each).
  description = "GPU node groups by GPU type."
  type = map(object({
    instance_types = list(string)
    gpus_per_node  = number
    min_size       = optional(number, 0)
    max_size       = number
    capacity_type  = optional(string, "ON_DEMAND")
    disk_size_gb   = optional(number, 200)
  }))
  default = {
    a6000 = {
      instance_types = ["g6e.4xlarge"]
      gpus_per_node  = 1
      max_size       = 8
    }
    a100 = {
      instance_types = ["p4d.24xlarge"]
      gpus_per_node  = 8
      max_size       = 1
    }
  }

  validation {
    condition     = alltrue([for p in values(var.gpu_pools) : p.min_size >= 0 && p.max_size >= 1 && p.min_size <= p.max_size])
    error_message = "Each GPU pool needs 0 <= min_size <= max_size and max_size >= 1."
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
  description = "S3 bucket of the store (globally unique); configs then use store: s3://<bucket>/<prefix>."
  type        = string
}

variable "create_store_bucket" {
  description = "Create the store bucket; false uses an existing one."
  type        = bool
  default     = true
}

variable "read_only_bucket_names" {
  description = "Further S3 buckets the jobs read (datasets, checkpoints)."
  type        = list(string)
  default     = []
}

variable "manage_service_account" {
  # k8s/ owns the namespace and the discover-ray ServiceAccount, whose overlays carry the IRSA
  # annotation: put the output service_account_annotations there. true creates both here instead (then
  # drop the overlays' annotation patch, or applying k8s/ would overwrite the role ARN).
  description = "Create the namespace and the annotated discover-ray service account with Terraform."
  type        = bool
  default     = false
}

variable "store_role_name" {
  description = "IAM role of the discover-ray service account (the k8s/ overlays' placeholder ARN names role/discover-ray)."
  type        = string
  default     = "discover-ray"
}

variable "nvidia_device_plugin_version" {
  description = "Chart version of the NVIDIA device plugin (advertises nvidia.com/gpu on the GPU nodes)."
  type        = string
  default     = "0.20.0"
}

variable "cluster_autoscaler_chart_version" {
  description = "Chart version of the cluster autoscaler (9.59.0 runs autoscaler 1.35)."
  type        = string
  default     = "9.59.0"
}

variable "tags" {
  description = "Extra AWS tags on everything."
  type        = map(string)
  default     = {}
}
