"""The development testbed: what the tests, the demo and the benchmarks run the product on.

None of it is shipped in the collection or installed on a dom0 or a guest:

* ``simulator``: the channel simulator, a stand-in for QEMU's socket and the guest's hvc
  tty (``python -m testbed.simulator``);
* ``stack``: a whole channel stack in one process tree (store, simulator, dom0 agent,
  guest client);
* ``host_sandbox``: commands against a throwaway overlay of a root (namespaces);
* ``guest_swarm``: many guests in one process, good and hostile, for the load test and
  the scale benchmark (``python -m testbed.guest_swarm``);
* ``ansible_run``: ansible-playbook from the venv against the working tree's collection;
* ``cloud_init_sandbox``, ``cloud_init_trees``: Debian's cloud-init run in a sandbox.

The product (``runtime/``, ``plugins/``, ``roles/``, ``datasource/``) never imports it.
"""
