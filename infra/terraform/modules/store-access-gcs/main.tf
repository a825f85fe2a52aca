# GCS access for the Ray pods through Workload Identity: the Kubernetes service account is bound to a
# Google service account and GKE's metadata server hands the pods its short-lived tokens. No key files.
resource "google_storage_bucket" "store" {
  count = var.create_bucket ? 1 : 0

  project                     = var.project_id
  name                        = var.bucket_name
  location                    = var.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
}

resource "google_service_account" "store" {
  project      = var.project_id
  account_id   = var.gsa_account_id
  display_name = "discover-ray store access (Workload Identity)"
}

# Read, write and delete objects of the store bucket, nothing else.
resource "google_storage_bucket_iam_member" "store" {
  bucket = var.create_bucket ? google_storage_bucket.store[0].name : var.bucket_name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.store.email}"
}

resource "google_storage_bucket_iam_member" "read" {
  for_each = toset(var.read_only_bucket_names)

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.store.email}"
}

# Lets exactly <namespace>/<service account> act as the Google service account.
resource "google_service_account_iam_member" "workload_identity" {
  service_account_id = google_service_account.store.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.namespace}/${var.service_account_name}]"
}

resource "kubernetes_service_account_v1" "store" {
  count = var.create_service_account ? 1 : 0

  metadata {
    name      = var.service_account_name
    namespace = var.namespace
    annotations = {
      "iam.gke.io/gcp-service-account" = google_service_account.store.email
    }
  }
}
