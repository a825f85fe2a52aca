locals {
  name = coalesce(var.name, "gpu-${var.gpu_type}")

  # The k8s/ manifests select these nodes by discover.ray/gpu-type. nvidia.com/gpu.present lets
  # the NVIDIA device plugin's DaemonSet schedule here without node-feature-discovery.
  node_labels = {
    "discover.ray/gpu-type"  = var.gpu_type
    "nvidia.com/gpu.present" = "true"
  }
  labels = merge(var.extra_labels, local.node_labels)

  # Only pods that tolerate nvidia.com/gpu (the Ray GPU workers, the device plugin) land here.
  taint = {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }

  # The cluster autoscaler reads what a node of a group at zero would bring from these tags.
  autoscaler_tags = merge(
    { for k, v in local.labels : "k8s.io/cluster-autoscaler/node-template/label/${k}" => v },
    {
      "k8s.io/cluster-autoscaler/node-template/taint/${local.taint.key}"    = "${local.taint.value}:NoSchedule"
      "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"    = tostring(var.gpus_per_node)
      "k8s.io/cluster-autoscaler/node-template/resources/ephemeral-storage" = "${var.disk_size_gb}G"
    },
  )
}

data "aws_partition" "current" {}

resource "aws_iam_role" "node" {
  count = var.node_role_arn == null ? 1 : 0

  name_prefix = "${substr(local.name, 0, 24)}-node-"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = var.node_role_arn == null ? toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ]) : toset([])

  role       = aws_iam_role.node[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.value}"
}

resource "aws_eks_node_group" "this" {
  cluster_name    = var.cluster_name
  node_group_name = local.name
  node_role_arn   = var.node_role_arn == null ? aws_iam_role.node[0].arn : var.node_role_arn
  subnet_ids      = var.subnet_ids

  ami_type       = var.ami_type
  instance_types = var.instance_types
  capacity_type  = var.capacity_type
  disk_size      = var.disk_size_gb

  scaling_config {
    min_size     = var.min_size
    desired_size = var.min_size
    max_size     = var.max_size
  }

  labels = local.labels

  taint {
    key    = local.taint.key
    value  = local.taint.value
    effect = local.taint.effect
  }

  update_config {
    max_unavailable = 1
  }

  tags = var.tags

  # The cluster autoscaler owns the desired size once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}

resource "aws_autoscaling_group_tag" "autoscaler" {
  for_each = local.autoscaler_tags

  autoscaling_group_name = aws_eks_node_group.this.resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.key
    value               = each.value
    propagate_at_launch = false
  }
}
