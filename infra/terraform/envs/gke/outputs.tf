output "cluster_name" {
  description = "GKE cluster name."
  value       = google_container_cluster.this.name
}

output "kubeconfig_command" {
  description = "Adds the cluster to ~/.kube/config."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.this.name} --region ${var.region} --project ${var.project_id}"
}

output "image_repository" {
  description = "Artifact Registry path for the discover-ray image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.image.repository_id}"
}

output "namespace" {
  description = "Namespace of the RayJobs and the discover-ray service account."
  value       = var.namespace
}

output "store_uri" {
  description = "Store root for the configs (store:)."
  value       = "gs://${module.store_access.bucket}"
}

output "service_account_annotations" {
  description = "Annotations the discover-ray ServiceAccount in k8s/ must carry (Workload Identity)."
  value       = module.store_access.service_account_annotations
}

output "gpu_node_pools" {
  description = "GPU node pool per discover.ray/gpu-type."
  value       = { for k, m in module.gpu_pool : k => m.node_pool_name }
}

output "kuberay_version" {
  description = "Installed KubeRay operator version."
  value       = module.kuberay_operator.kuberay_version
}
