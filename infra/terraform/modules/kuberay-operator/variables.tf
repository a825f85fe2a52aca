variable "kuberay_version" {
  description = "KubeRay operator chart version (the chart and the operator share it). RayCronJob needs >= 1.6.0."
  type        = string
  default     = "1.7.0"
}

variable "namespace" {
  description = "Namespace the operator runs in (created if absent). It watches RayJobs in every namespace."
  type        = string
  default     = "kuberay-system"
}

variable "release_name" {
  description = "Helm release name."
  type        = string
  default     = "kuberay-operator"
}

variable "extra_values" {
  description = "Further Helm values documents (YAML), applied after values.yaml."
  type        = list(string)
  default     = []
}
