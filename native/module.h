// Process-wide registry of loaded PKCS#11 modules.
//
// A module is dlopen'ed once per path and never dlclose'd (some modules register
// process-exit handlers). C_Initialize/C_Finalize are reference counted across the
// engines of the process that use the same module, so two engines on one module work
// (the second would otherwise get CKR_CRYPTOKI_ALREADY_INITIALIZED).
#pragma once

#include <p11-kit/pkcs11.h>

#include <mutex>
#include <string>

namespace xks {

struct Module;

struct LoadError {
  CK_RV rv = CKR_OK;
  const char* fn = nullptr;   // PKCS#11 function (or "dlopen"/"C_GetFunctionList")
  const char* xks = nullptr;  // XKS_LOAD_FAILED when the library could not be loaded
  std::string detail;         // dlerror() text; never secret
};

// dlopen (RTLD_NOW|RTLD_LOCAL), C_GetFunctionList, C_Initialize unless initialized already.
// C_Initialize asks for OS locking (CKF_OS_LOCKING_OK); when the module refuses (any error,
// CKR_CANT_LOCK being the one the standard names), it is initialized with NULL arguments, a
// promise of single-threaded use: moduleSerialMutex() then returns the mutex every engine
// must hold around its calls.
// nullptr: the library could not be loaded (err.xks). Otherwise a reference is taken even when
// C_Initialize failed (err.rv, err.fn set): re-initialization may succeed later.
Module* acquireModule(const std::string& path, LoadError& err);
CK_FUNCTION_LIST_PTR moduleFunctions(Module* m);
// Non-null while the module is initialized without OS locking (see acquireModule).
std::timed_mutex* moduleSerialMutex(Module* m);
// The module's answer to C_Initialize with CKF_OS_LOCKING_OK (CKR_OK unless it refused).
CK_RV moduleLockingRv(Module* m);
// Drops one reference; C_Finalize when it was the last.
void releaseModule(Module* m);
// C_Finalize then C_Initialize again (recovery after CKR_DEVICE_ERROR).
CK_RV reinitializeModule(Module* m, const char*& fn);

}  // namespace xks
