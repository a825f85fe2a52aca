output "cluster_name" {
  description = "EKS cluster name."
  value       = module.eks.cluster_name
}

output "kubeconfig_command" {
  description = "Adds the cluster to ~/.kube/config."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "image_repository" {
  description = "ECR repository for the discover-ray image."
  value       = aws_ecr_repository.image.repository_url
}

output "namespace" {
  description = "Namespace of the RayJobs and the discover-ray service account."
  value       = var.namespace
}

output "store_uri" {
  description = "Store root for the configs (store:)."
  value       = "s3://${module.store_access.bucket}"
}

output "service_account_annotations" {
  description = "Annotations the discover-ray ServiceAccount in k8s/ must carry (IRSA)."
  value       = module.store_access.service_account_annotations
}

output "gpu_node_groups" {
  description = "GPU node group per discover.ray/gpu-type."
  value       = { for k, m in module.gpu_pool : k => m.node_group_name }
}

output "kuberay_version" {
  description = "Installed KubeRay operator version."
  value       = module.kuberay_operator.kuberay_version
}
