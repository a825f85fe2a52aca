output "node_pool_name" {
  description = "GKE node pool name."
  value       = google_container_node_pool.this.name
}

output "node_labels" {
  description = "Kubernetes labels of the nodes."
  value       = merge(var.extra_labels, local.node_labels)
}

output "node_taint" {
  description = "The taint the Ray GPU workers tolerate."
  value       = "${local.taint.key}=${local.taint.value}:NoSchedule"
}
