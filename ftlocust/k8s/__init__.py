"""Kubernetes faults' plumbing: plain functions with keyword selectors (chaostoolkit-kubernetes
style), the only place ftlocust imports the `kubernetes` client.

    client.py         `load` (kubeconfig, else in-cluster), `warm_up`, `api_error` (one line)
    selection.py      `select_pods`: the ONE way a kind finds its pods (by label selector)
    pods.py           `delete_pod` (uid precondition), `pod_logs`, `wait_for_replacement`
    exec.py           `run_in_pod`, `list_processes` / `find_processes`, `signal_in_pod`
    networkpolicy.py  `NetworkPolicyPartitioner`: partitions as deny NetworkPolicies (the
                      `ftlocust.netns.NetworkLab` shape), guardian action `k8s-networkpolicy-delete`

Everything is namespaced: no call names another namespace than the one it was given, and
nothing here lists or changes cluster-scoped objects (the one exception is a read of the
namespace object itself, to say "namespace not found" instead of "no pods", whose 403 is
ignored).
"""
