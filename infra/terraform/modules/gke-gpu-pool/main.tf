locals {
  name = coalesce(var.name, "gpu-${var.gpu_type}")

  # The k8s/ manifests select these nodes by discover.ray/gpu-type.
  node_labels = {
    "discover.ray/gpu-type" = var.gpu_type
  }

  # GKE adds this taint to GPU pools itself; it is declared so that the pool's contract with the
  # manifests' tolerations is written down here and checked by the tests.
  taint = {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }
}

resource "google_container_node_pool" "this" {
  project        = var.project_id
  name           = local.name
  cluster        = var.cluster
  location       = var.location
  node_locations = length(var.node_locations) > 0 ? var.node_locations : null

  initial_node_count = 0

  autoscaling {
    total_min_node_count = var.min_nodes
    total_max_node_count = var.max_nodes
    location_policy      = "ANY"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type = var.machine_type
    spot         = var.spot
    disk_type    = var.disk_type
    disk_size_gb = var.disk_size_gb
    image_type   = "COS_CONTAINERD"

    guest_accelerator {
      type  = var.accelerator_type
      count = var.accelerator_count

      # GKE installs the driver and runs its own device plugin: nothing else to deploy.
      gpu_driver_installation_config {
        gpu_driver_version = var.gpu_driver_version
      }
    }

    labels = merge(var.extra_labels, local.node_labels)

    taint {
      key    = local.taint.key
      value  = local.taint.value
      effect = local.taint.effect
    }

    service_account = var.service_account
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    # Pods reach Google APIs as their Kubernetes service account (Workload Identity), never as the node.
    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_integrity_monitoring = true
    }
  }

  lifecycle {
    ignore_changes = [initial_node_count]
  }
}
