output "node_group_name" {
  description = "EKS node group name."
  value       = aws_eks_node_group.this.node_group_name
}

output "autoscaling_group_name" {
  description = "The node group's Auto Scaling group."
  value       = aws_eks_node_group.this.resources[0].autoscaling_groups[0].name
}

output "node_labels" {
  description = "Kubernetes labels of the nodes."
  value       = local.labels
}

output "node_taint" {
  description = "The taint the Ray GPU workers tolerate."
  value       = "${local.taint.key}=${local.taint.value}:NoSchedule"
}
