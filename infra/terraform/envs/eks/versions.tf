terraform {
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.28"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.1"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.0"
    }
    # Required by the EKS module; pinned here so that every provider of this root is.
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
    time = {
      source  = "hashicorp/time"
      version = "~> 0.13"
    }
  }

  # State is local until a backend is added here, e.g. for a team:
  #   backend "s3" { bucket = "<state bucket>", key = "discover-ray/eks.tfstate", region = "<region>", use_lockfile = true }
}
