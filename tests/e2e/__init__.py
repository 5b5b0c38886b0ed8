"""End-to-end tests against a real etcd + kube-apiserver + kube-controller-manager."""
