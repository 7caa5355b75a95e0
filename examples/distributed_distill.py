"""Distillation on several processes: the same calls as in a notebook, started by torchrun.

    torchrun --nproc_per_node=2 examples/distributed_distill.py          # 2 processes on this machine
    python examples/distributed_distill.py                               # 1 process: exactly a notebook's run

On a SLURM cluster, one torchrun per node and torchrun starts a process per GPU:

    srun --nodes=2 --ntasks-per-node=1 torchrun --nnodes=2 --nproc_per_node=4 \\
         --rdzv_backend=c10d --rdzv_endpoint=$(scontrol show hostnames | head -n1):29500 \\
         examples/distributed_distill.py

Nothing below mentions processes: under torchrun kdnb starts the process group (nccl on GPUs, gloo on CPUs),
puts each process on its own GPU (device="auto" -> cuda:LOCAL_RANK), shards the loaders, wraps the trained
model in DistributedDataParallel and keeps every process's History the same. A loader's batch_size is the
global batch, split over the processes, so 1 and N processes take the same optimizer steps. The progress
bar, warnings and kdnb.save happen on rank 0 only; the `if` below only keeps the printing to one copy.
"""
import torch

import kdnb
from kdnb.engine.distributed import is_main_process

torch.set_num_threads(1)  # one CPU thread per process: the processes share the cores
train, val = kdnb.datasets.load("digits", batch_size=128, seed=0, flat=False)

teacher = kdnb.models.cnn_bn(width=48)
kdnb.train(teacher, train, val=val, epochs=4, lr=3e-3)
teacher.eval()

# With every digit labelled the distilled student about ties the scratch one (README, tutorial 01): the point
# here is the same call on any number of processes (bench/distributed.py times this pair).
res = kdnb.distill(teacher, kdnb.models.cnn_bn(width=32), train, val=val, epochs=4, lr=2e-3,
                   temperature=4.0, baseline=True)
kdnb.save(res.student, "student.kdnb")  # written once, by rank 0
if is_main_process():
    print(res.summary())
    print(f"processes: {kdnb.engine.distributed.world_size()}, history: {res.history}")
