output "role_arn" {
  description = "IAM role the service account assumes."
  value       = aws_iam_role.store.arn
}

output "bucket" {
  description = "Store bucket name; configs use store: s3://<bucket>/<prefix>."
  value       = var.bucket_name
}

output "service_account_annotations" {
  description = "Annotations the discover-ray ServiceAccount must carry (set here too when create_service_account)."
  value       = { "eks.amazonaws.com/role-arn" = aws_iam_role.store.arn }
}
