provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_client_config" "current" {}

# Both providers reach the new cluster with the applier's short-lived OAuth token.
provider "kubernetes" {
  host                   = "https://${google_container_cluster.this.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(google_container_cluster.this.master_auth[0].cluster_ca_certificate)
}

provider "helm" {
  kubernetes = {
    host                   = "https://${google_container_cluster.this.endpoint}"
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = base64decode(google_container_cluster.this.master_auth[0].cluster_ca_certificate)
  }
}

# A new project has these APIs off. iamcredentials mints the Workload Identity tokens.
resource "google_project_service" "apis" {
  for_each = toset([
    "container.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "storage.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# Nodes run as a least-privilege account, not the project's default (Editor) compute account.
resource "google_service_account" "nodes" {
  project      = var.project_id
  account_id   = "${substr(var.cluster_name, 0, 23)}-nodes"
  display_name = "${var.cluster_name} GKE nodes"

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "this" {
  project    = var.project_id
  name       = var.cluster_name
  location   = var.region
  network    = var.network
  subnetwork = var.subnetwork

  # Node pools are managed below, each on its own.
  remove_default_node_pool = true
  initial_node_count       = 1

  deletion_protection = var.deletion_protection

  release_channel {
    channel = var.release_channel
  }

  # Lets Kubernetes service accounts act as Google service accounts (the store access).
  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  ip_allocation_policy {}

  depends_on = [google_project_service.apis]
}

resource "google_container_node_pool" "system" {
  project  = var.project_id
  name     = "system"
  cluster  = google_container_cluster.this.id
  location = var.region

  autoscaling {
    total_min_node_count = var.system_min_nodes
    total_max_node_count = var.system_max_nodes
    location_policy      = "BALANCED"
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.system_machine_type
    disk_type       = "pd-balanced"
    disk_size_gb    = 100
    image_type      = "COS_CONTAINERD"
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }

  depends_on = [google_project_iam_member.nodes]
}

module "gpu_pool" {
  source   = "../../modules/gke-gpu-pool"
  for_each = var.gpu_pools

  project_id        = var.project_id
  cluster           = google_container_cluster.this.id
  location          = var.region
  node_locations    = each.value.zones != null ? each.value.zones : var.gpu_zones
  gpu_type          = each.key
  machine_type      = each.value.machine_type
  accelerator_type  = each.value.accelerator_type
  accelerator_count = each.value.accelerator_count
  disk_type         = each.value.disk_type
  disk_size_gb      = each.value.disk_size_gb
  min_nodes         = each.value.min_nodes
  max_nodes         = each.value.max_nodes
  spot              = each.value.spot
  service_account   = google_service_account.nodes.email

  depends_on = [google_project_iam_member.nodes]
}

module "kuberay_operator" {
  source = "../../modules/kuberay-operator"

  kuberay_version = var.kuberay_version
  namespace       = var.operator_namespace

  depends_on = [google_container_node_pool.system]
}

resource "kubernetes_namespace_v1" "jobs" {
  count = var.manage_service_account ? 1 : 0

  metadata {
    name = var.namespace
  }

  depends_on = [google_container_node_pool.system]
}

module "store_access" {
  source = "../../modules/store-access-gcs"

  project_id             = var.project_id
  bucket_name            = var.store_bucket_name
  bucket_location        = var.region
  create_bucket          = var.create_store_bucket
  read_only_bucket_names = var.read_only_bucket_names
  namespace              = var.namespace
  create_service_account = var.manage_service_account

  # The workload pool exists once the cluster does.
  depends_on = [google_container_cluster.this, kubernetes_namespace_v1.jobs]
}

# The image registry: tags are immutable, so a RayJob's image reference always means one build.
resource "google_artifact_registry_repository" "image" {
  project       = var.project_id
  location      = var.region
  repository_id = var.cluster_name
  format        = "DOCKER"

  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.apis]
}
