// PyTorch's own markers, shared by torchops.bpf.c and (through BCC) torchops.py.
#ifndef GPUSCOPE_TORCHOPS_H
#define GPUSCOPE_TORCHOPS_H

#define TORCH_REGION 1    // a record_function region: "Optimizer.step#SGD.step", a DataLoader __next__
#define TORCH_BACKWARD 2  // torch::autograd::Engine::execute: one backward pass

#define TORCH_NAME 80

struct torch_event {
    u64 start;
    u64 end;
    u32 pid;
    u32 tid;
    u32 kind;     // TORCH_*
    u32 pad;
    char name[TORCH_NAME];
};

struct torch_open {
    u64 start;
    u64 slot;     // where record_function_enter_new writes its handle (the hidden return slot)
    char name[TORCH_NAME];
};

struct torch_key {
    u32 pid;
    u32 pad;
    u64 handle;   // the PythonRecordFunction the region's exit is given
};

#endif
