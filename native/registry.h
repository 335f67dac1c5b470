// Process-wide state shared by every engine: several engines (one per event loop) may use one
// module, and a re-initialization (C_Finalize) must exclude the calls of all of them.
#pragma once

#include <atomic>
#include <cstdint>
#include <shared_mutex>

namespace xks {

class Core;
struct Module;

namespace registry {

// The context lock of every engine in the process: every job holds it shared, module
// re-initialization exclusively.
std::shared_timed_mutex& contextMutex();
// Re-initializations waiting for the context lock exclusively (jobs let them in first).
std::atomic<uint32_t>& exclusivePending();

// Engines with threads, for the process-exit hook and for re-initialization. Idempotent.
void add(Core* c);
void remove(Core* c);
// process.exit() calls exit() without tearing the Node environment down, so no cleanup hook
// runs; the module's static destructors would then race our workers. An atexit handler
// registered after the module was loaded runs before those destructors and stops every
// engine first. Installed once, by the first open that loaded a module.
void installExitHook();
// `self` is about to re-initialize module m (exclusive lock held): every other engine on m
// forgets its sessions and key handles.
void forgetOthersOn(const Core* self, const Module* m);

}  // namespace registry
}  // namespace xks
