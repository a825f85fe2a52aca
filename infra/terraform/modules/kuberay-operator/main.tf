# The KubeRay operator (CRDs ship in the chart's crds/ folder, installed on first install only:
# after a version bump, apply the new CRDs with kubectl before upgrading the release).
resource "helm_release" "kuberay_operator" {
  name             = var.release_name
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = var.namespace
  create_namespace = true

  # values.yaml switches on the RayCronJob feature gate (alpha, off by default through v1.7.0).
  values = concat([file("${path.module}/values.yaml")], var.extra_values)

  atomic          = true
  cleanup_on_fail = true
  max_history     = 5
  timeout         = 600
}
