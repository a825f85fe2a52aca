provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

# Both providers reach the new cluster with a short-lived token from the applier's AWS identity.
provider "kubernetes" {
  host                   = module.eks.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
  }
}

provider "helm" {
  kubernetes = {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
  }
}

data "aws_availability_zones" "available" {
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  azs  = slice(data.aws_availability_zones.available.names, 0, 3)
  tags = merge({ Project = "discover-ray" }, var.tags)
}

module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 6.6"

  name = var.cluster_name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, i + 48)]

  # Nodes stay private; one NAT gateway serves image pulls and S3 outside the gateway endpoint.
  enable_nat_gateway = true
  single_nat_gateway = true

  public_subnet_tags  = { "kubernetes.io/role/elb" = 1 }
  private_subnet_tags = { "kubernetes.io/role/internal-elb" = 1 }
}

# S3 traffic (the store) bypasses the NAT gateway.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = module.vpc.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = module.vpc.private_route_table_ids
}

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 21.19"

  name               = var.cluster_name
  kubernetes_version = var.kubernetes_version

  endpoint_public_access                   = true
  endpoint_public_access_cidrs             = var.api_allowed_cidrs
  enable_cluster_creator_admin_permissions = true

  # IAM OIDC provider for IRSA (the store role, the autoscaler role).
  enable_irsa = true

  addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni = {
      before_compute = true
    }
  }

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  eks_managed_node_groups = {
    system = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.system_instance_types
      min_size       = var.system_min_size
      max_size       = var.system_max_size
      desired_size   = var.system_min_size

      # The GPU groups sit in the cluster's primary security group; sharing it lets the Ray head
      # and CoreDNS here talk to the workers there.
      attach_cluster_primary_security_group = true

      # The Ray head runs the same multi-gigabyte image as the workers.
      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = 100
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
    }
  }
}

module "gpu_pool" {
  source   = "../../modules/eks-gpu-pool"
  for_each = var.gpu_pools

  cluster_name   = module.eks.cluster_name
  subnet_ids     = module.vpc.private_subnets
  gpu_type       = each.key
  instance_types = each.value.instance_types
  gpus_per_node  = each.value.gpus_per_node
  min_size       = each.value.min_size
  max_size       = each.value.max_size
  capacity_type  = each.value.capacity_type
  disk_size_gb   = each.value.disk_size_gb
  tags           = local.tags

  # Nodes join once the network add-on exists.
  depends_on = [module.eks]
}

module "kuberay_operator" {
  source = "../../modules/kuberay-operator"

  kuberay_version = var.kuberay_version
  namespace       = var.operator_namespace

  depends_on = [module.eks]
}

resource "kubernetes_namespace_v1" "jobs" {
  count = var.manage_service_account ? 1 : 0

  metadata {
    name = var.namespace
  }

  depends_on = [module.eks]
}

module "store_access" {
  source = "../../modules/store-access-s3"

  bucket_name            = var.store_bucket_name
  create_bucket          = var.create_store_bucket
  read_only_bucket_names = var.read_only_bucket_names
  namespace              = var.namespace
  create_service_account = var.manage_service_account
  oidc_provider_arn      = module.eks.oidc_provider_arn
  oidc_issuer_url        = module.eks.cluster_oidc_issuer_url
  role_name              = var.store_role_name
  tags                   = local.tags

  depends_on = [kubernetes_namespace_v1.jobs]
}

# The image registry: tags are immutable, so a RayJob's image reference always means one build.
resource "aws_ecr_repository" "image" {
  name                 = var.cluster_name
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }
}
