output "gsa_email" {
  description = "Google service account the pods act as."
  value       = google_service_account.store.email
}

output "bucket" {
  description = "Store bucket name; configs use store: gs://<bucket>/<prefix>."
  value       = var.bucket_name
}

output "service_account_annotations" {
  description = "Annotations the discover-ray ServiceAccount must carry (set here too when create_service_account)."
  value       = { "iam.gke.io/gcp-service-account" = google_service_account.store.email }
}
