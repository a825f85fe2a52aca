output "namespace" {
  description = "Namespace of the operator."
  value       = helm_release.kuberay_operator.namespace
}

output "kuberay_version" {
  description = "Installed chart (and operator) version."
  value       = helm_release.kuberay_operator.version
}
