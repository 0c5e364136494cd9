# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""Services the compiled handlers call many times per request, compiled: the step's function
name (Machine.set_function), the machine RNG and the latency model, the guest's page and
kmalloc allocator, MSI-X delivery, the notify MMIO write, blkdebug-style fault rules and
blk_aio_submit.

Each function is a line-for-line translation of the Python method or function named in its
docstring, and runs only while that Python code is the one in place: when a class attribute
was replaced, or an instance carries its own (a test's failing kmalloc), or the object is of
another type, the Python code runs instead.
"""
from emu.block import backend as _BK
from emu.block import file_posix as _FP
from emu.block.latency import LatencyModel
from emu import machine as _machine_mod
from emu.machine import Machine
from emu.mem.page_alloc import KMALLOC_CLASSES, PageAllocator
from emu.sim.rng import splitmix64
from emu.sim.steps import EffectLog, Step
from emu.spec import pci as _P
from emu.transport.virtio_pci import Transport

from emu_fast._core cimport sched_call, sched_cont, sched_post
from emu_fast._slots cimport slot_offsets, sget, sset

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef object _Machine = Machine
cdef object _PageAllocator = PageAllocator
cdef object _LatencyModel = LatencyModel
cdef object _Transport = Transport
cdef object _PY_SET_FUNCTION = Machine.set_function
cdef object _PY_RAND = Machine.rand
cdef object _PY_RAISE_MSI = Machine.raise_msi
cdef object _PY_KMALLOC = PageAllocator.kmalloc
cdef object _PY_KFREE = PageAllocator.kfree
cdef object _PY_ALLOC_PAGES = PageAllocator.alloc_pages
cdef object _PY_FREE_PAGES = PageAllocator.free_pages
cdef object _PY_COST = LatencyModel.cost
cdef object _PY_MSIX_NOTIFY = Transport.msix_notify
cdef object _PY_MMIO_WRITE = Transport.mmio_write
cdef object _PY_SPLITMIX = splitmix64
cdef object _PY_FAULT = _FP._fault
cdef object _PY_SUBMIT = _BK.blk_aio_submit
cdef object _EffectLog = EffectLog

# members read and written at their offsets (emu_fast/_slots.pxd)
cdef object _Step = Step
cdef object _BlockState = _BK.BlockState
cdef Py_ssize_t _M[8]
cdef Py_ssize_t _S[3]
cdef Py_ssize_t _B[3]
cdef Py_ssize_t _L[1]
SLOT_PATHS = {
    "Machine": slot_offsets(_Machine, ("cur", "rng", "log", "sim", "block", "counters", "guest",
                                       "timing"), _M),
    "Step": slot_offsets(_Step, ("function", "source", "caller"), _S),
    "BlockState": slot_offsets(_BlockState, ("next_req", "reqs", "faults"), _B),
    "EffectLog": slot_offsets(_EffectLog, ("cur",), _L),
}
cdef inline object _m_cur(object m): return sget(m, _Machine, _M[0], "cur")
cdef inline object _m_rng(object m): return sget(m, _Machine, _M[1], "rng")
cdef inline object _m_log(object m): return sget(m, _Machine, _M[2], "log")
cdef inline object _m_sim(object m): return sget(m, _Machine, _M[3], "sim")
cdef inline object _m_block(object m): return sget(m, _Machine, _M[4], "block")
cdef inline object _m_counters(object m): return sget(m, _Machine, _M[5], "counters")
cdef inline object _m_guest(object m): return sget(m, _Machine, _M[6], "guest")
cdef inline object _m_timing(object m): return sget(m, _Machine, _M[7], "timing")
cdef object _PY_LOG_ADD = EffectLog.add
cdef tuple _KMALLOC_CLASSES = tuple(KMALLOC_CLASSES)
cdef long long PAGE_SHIFT = 12
cdef long long PAGE_SIZE = 4096
cdef long long MSIX_ADDRESS = _P.MSIX_ADDRESS
cdef long long NO_VECTOR = _P.NO_VECTOR
cdef long long BAR4_GPA = _P.BAR4_GPA
cdef long long COMMON_CFG = _P.COMMON_CFG
cdef long long DEVICE_CFG = _P.DEVICE_CFG
cdef long long REGION_SIZE = _P.REGION_SIZE
cdef object MASK64 = (1 << 64) - 1
cdef str _VQ = "vq"
cdef str _INTERRUPTS = "interrupts"
cdef str _IRQS_LOST = "irqs_lost"


cdef inline bint _own(object obj, object cls, object pycls_attr, str name, object py) except -1:
    """obj is exactly a cls whose method `name` is still py, with no instance override."""
    if type(obj) is not cls or pycls_attr is not py:
        return False
    d = getattr(obj, "__dict__", None)
    return d is None or name not in d


cdef inline void _log_add(object log, tuple eff) except *:
    """EffectLog.add"""
    if type(log) is _EffectLog and _EffectLog.add is _PY_LOG_ADD:
        cur = log.cur
        if cur is not None:
            cur.append(eff)
    else:
        log.add(eff)


# -- the machine's services (emu/machine.py) ------------------------------------------------------

def set_function(m, function, source=None, caller=None):
    """Machine.set_function"""
    if type(m) is not _Machine or _Machine.set_function is not _PY_SET_FUNCTION:
        return m.set_function(function, source, caller)
    cur = _m_cur(m)
    if cur is not None:
        sset(cur, _Step, _S[0], "function", function)
        if source:
            sset(cur, _Step, _S[1], "source", source)
        if caller:
            sset(cur, _Step, _S[2], "caller", caller)


def rand(m):
    """Machine.rand (emu.sim.rng.splitmix64 inlined)"""
    if type(m) is not _Machine or _Machine.rand is not _PY_RAND \
            or _machine_mod.splitmix64 is not _PY_SPLITMIX or "rand" in m.__dict__:
        return m.rand()                 # (an instance's own rand too, as Machine's callers see it)
    state = _m_rng(m)
    if type(state) is not int:
        return m.rand()
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    sset(m, _Machine, _M[1], "rng", state)
    return z ^ (z >> 31)


def raise_msi(m, addr, data):
    """Machine.raise_msi"""
    if type(m) is not _Machine or _Machine.raise_msi is not _PY_RAISE_MSI:
        return m.raise_msi(addr, data)
    handler = _m_guest(m).irq_vectors.get(data) if addr == MSIX_ADDRESS else None
    if handler is None:
        _m_counters(m)[_IRQS_LOST] += 1
        return
    kind = "vring.interrupt" if handler[0] == _VQ else "probe.config_changed"
    sched_post(_m_sim(m), "vcpu", kind, (data,), _m_timing(m).irq_ns, True)


# -- the latency model (emu/block/latency.py) --------------------------------------------------------

def cost(lat, op, nbytes, noise):
    """LatencyModel.cost"""
    if type(lat) is not _LatencyModel or _LatencyModel.cost is not _PY_COST:
        return lat.cost(op, nbytes, noise)
    if op == "read":
        base = lat.read_ns
    elif op == "write":
        base = lat.write_ns
    elif op == "flush":
        base = lat.flush_ns
    elif op == "discard":
        base = lat.discard_ns
    elif op == "write_zeroes":
        base = lat.zero_ns
    else:
        return lat.cost(op, nbytes, noise)       # (the KeyError, as in Python)
    if op == "read" or op == "write":
        base += nbytes * lat.ps_per_byte // 1000
    jitter = lat.jitter_pct
    if jitter:
        span = base * jitter // 100
        base += noise % (2 * span + 1) - span if span else 0
    return max(base, 1)


# -- the guest's allocator (emu/mem/page_alloc.py) ------------------------------------------------

def alloc_pages(pages, npages):
    """PageAllocator.alloc_pages"""
    if not _own(pages, _PageAllocator, _PageAllocator.alloc_pages, "alloc_pages", _PY_ALLOC_PAGES) \
            or type(npages) is not int or npages < 0:
        return pages.alloc_pages(npages)
    return _alloc_pages(pages, npages)


cdef object _alloc_pages(object pages, Py_ssize_t npages):
    cdef bytearray used = pages.used
    pos = used.find(bytes(npages))
    if pos < 0:
        return None
    used[pos:pos + npages] = b"\x01" * npages
    gpa = pos << PAGE_SHIFT
    pages.large[gpa] = npages
    return gpa


def free_pages(pages, gpa):
    """PageAllocator.free_pages"""
    if not _own(pages, _PageAllocator, _PageAllocator.free_pages, "free_pages", _PY_FREE_PAGES):
        return pages.free_pages(gpa)
    npages = pages.large.pop(gpa)
    pos = gpa >> PAGE_SHIFT
    pages.used[pos:pos + npages] = bytes(npages)


def kmalloc(pages, size):
    """PageAllocator.kmalloc"""
    if not _own(pages, _PageAllocator, _PageAllocator.kmalloc, "kmalloc", _PY_KMALLOC) \
            or type(size) is not int \
            or not _own(pages, _PageAllocator, _PageAllocator.alloc_pages, "alloc_pages", _PY_ALLOC_PAGES):
        return pages.kmalloc(size)
    cls = None
    for c in _KMALLOC_CLASSES:
        if c >= size:
            cls = c
            break
    if cls is None:
        npages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        if npages < 0:
            return pages.alloc_pages(npages)
        return _alloc_pages(pages, npages)
    slab_free = pages.slab_free
    free = slab_free.get(cls)
    if free is None:
        free = slab_free.setdefault(cls, [])
    if not free:
        page = _alloc_pages(pages, 1)
        if page is None:
            return None
        del pages.large[page]              # the page now belongs to the slab
        n = PAGE_SIZE // cls
        free.extend([page + cls * i for i in range(n - 1, -1, -1)])
    gpa = free.pop()
    pages.slab_objs[gpa] = cls
    return gpa


def kfree(pages, gpa):
    """PageAllocator.kfree"""
    if not _own(pages, _PageAllocator, _PageAllocator.kfree, "kfree", _PY_KFREE) \
            or not _own(pages, _PageAllocator, _PageAllocator.free_pages, "free_pages", _PY_FREE_PAGES):
        return pages.kfree(gpa)
    cls = pages.slab_objs.pop(gpa, None)
    if cls is None:
        npages = pages.large.pop(gpa)
        pos = gpa >> PAGE_SHIFT
        pages.used[pos:pos + npages] = bytes(npages)
        return
    pages.slab_free[cls].append(gpa)


# -- virtio-pci (emu/transport/virtio_pci.py) -------------------------------------------------------

def msix_notify(transport, m, vector):
    """Transport.msix_notify"""
    if not _own(transport, _Transport, _Transport.msix_notify, "msix_notify", _PY_MSIX_NOTIFY):
        return transport.msix_notify(m, vector)
    px = transport.proxy
    if not px.msix_enabled or vector == NO_VECTOR or vector >= px.nvectors:
        return False
    entry = px.msix_table[vector]
    log = _m_log(m)
    if entry.masked:
        px.msix_pba[vector] = True
        _log_add(log, ("reg", f"msix.pba[{vector}]", False, True))
        return False
    _log_add(log, ("msi", vector, entry.addr, entry.data))
    _m_counters(m)[_INTERRUPTS] += 1
    raise_msi(m, entry.addr, entry.data)
    return True


def mmio_write(transport, m, off, size, val):
    """Transport.mmio_write"""
    if not _own(transport, _Transport, _Transport.mmio_write, "mmio_write", _PY_MMIO_WRITE):
        return transport.mmio_write(m, off, size, val)
    _log_add(_m_log(m), ("mmio-write", BAR4_GPA + off, size, val))
    if COMMON_CFG <= off < COMMON_CFG + REGION_SIZE:
        transport.common_write(m, off - COMMON_CFG, val)
    elif DEVICE_CFG <= off < DEVICE_CFG + REGION_SIZE:
        transport.config_write(m, off - DEVICE_CFG, size, val)


# -- the block layer (emu/block/file_posix.py, emu/block/backend.py) ------------------------------

def fault(m, op, offset, nbytes):
    """emu.block.file_posix._fault"""
    if _FP._fault is not _PY_FAULT:
        return _FP._fault(m, op, offset, nbytes)
    for rule in sget(_m_block(m), _BlockState, _B[2], "faults"):
        if rule["op"] != op or rule["count"] == 0:
            continue
        if op != "flush" and not (offset < rule["end"] and rule["start"] < offset + nbytes):
            continue
        if rule["count"] > 0:
            rule["count"] -= 1
        return rule["errno"]
    return 0


def blk_aio_submit(m, op, offset, nbytes, qiov, flags, cb, then):
    """emu.block.backend.blk_aio_submit"""
    if _BK.blk_aio_submit is not _PY_SUBMIT:
        return _BK.blk_aio_submit(m, op, offset, nbytes, qiov, flags, cb, then)
    blk = _m_block(m)
    bid = sget(blk, _BlockState, _B[0], "next_req")
    sset(blk, _BlockState, _B[0], "next_req", bid + 1)
    if qiov is not None:
        nbytes = sum([n for _a, n in qiov])
    sget(blk, _BlockState, _B[1], "reqs")[bid] = {"id": bid, "op": op, "cur_op": op, "offset": offset, "bytes": nbytes,
                     "qiov": qiov, "flags": flags, "cb": cb, "ret": None, "phase": "submit"}
    if then is None:
        sched_cont(_m_sim(m), "blk.co_entry", (bid,))
    else:
        sched_call(_m_sim(m), "blk.co_entry", (bid,), then[0], then[1])
    return bid


# -- checkpoints of the virtio-pci proxy (emu/transport/virtio_pci.py) -----------------------------

from cpython.object cimport PyObject

from cpython.list cimport PyList_GET_ITEM
from emu_fast._pydict311 cimport vb_fill_values       # (its C: vb_dictkeys, VB_UENTRIES)

cdef extern from "Python.h":
    PyObject** _PyObject_GetDictPtr(object obj)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    Py_ssize_t Py_SIZE(object o)

# CPython 3.11's split tables (Include/internal/pycore_dict.h): an instance __dict__ sharing its
# class's keys object keeps its values in an array in key order (PyDictValues), ma_used of them
# set.  Off 3.11 vb_split_values gives NULL and proxy_touched takes the PyDict_Next path.
cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    static PyObject **vb_split_values(PyObject *d) {
        PyDictObject *mp = (PyDictObject *)d;
        return (PyDict_CheckExact(d) && mp->ma_values) ? (PyObject **)mp->ma_values : NULL;
    }
    static void *vb_keys_of(PyObject *d) { return ((PyDictObject *)d)->ma_keys; }
    static Py_ssize_t vb_used(PyObject *d) { return ((PyDictObject *)d)->ma_used; }
    static int vb_split_keys_start(void *k, PyObject **keys, Py_ssize_t n) {
        vb_dictkeys *dk = (vb_dictkeys *)k;     /* DICT_KEYS_SPLIT: PyDictUnicodeEntry */
        Py_ssize_t j;
        if (dk->dk_kind != 2 || dk->dk_nentries < n)
            return 0;
        for (j = 0; j < n; j++)
            if (VB_UENTRIES(dk)[j].me_key != keys[j])
                return 0;
        return 1;
    }
    #else
    static PyObject **vb_split_values(PyObject *d) { return NULL; }
    static void *vb_keys_of(PyObject *d) { return NULL; }
    static Py_ssize_t vb_used(PyObject *d) { return 0; }
    static int vb_split_keys_start(void *k, PyObject **keys, Py_ssize_t n) { return 0; }
    #endif
    """
    PyObject** vb_split_values(PyObject* d)
    void* vb_keys_of(PyObject* d)
    Py_ssize_t vb_used(PyObject* d)
    int vb_split_keys_start(void* k, PyObject** keys, Py_ssize_t n)

import copyreg as _copyreg
from emu.transport import virtio_pci as _VP

cdef object _ProxyQueue = _VP.ProxyQueue
cdef object _VirtioPciProxy = _VP.VirtioPciProxy
cdef object _PY_GETSTATE = _VP.VirtioPciProxy.__getstate__
cdef object _PY_STATE_WITH = _VP.VirtioPciProxy.state_with
cdef object _NEWOBJ = _copyreg.__newobj__
cdef object _ZERO = 0
cdef object _OBJ_REDUCE_EX = object.__reduce_ex__
cdef object _OBJ_REDUCE = object.__reduce__
import pickle as _pickle
cdef int _PROTO = _pickle.HIGHEST_PROTOCOL         # the checkpoints' (emu.debug.timeline._Freezer)


cdef inline bint _zero_value(PyObject* v):
    """v is the cached small int 0, or a list of two of them (equal to an idle field)."""
    if v == <PyObject*>_ZERO:
        return True
    if type(<object>v) is not list or Py_SIZE(<object>v) != 2:
        return False
    return (PyList_GET_ITEM(<object>v, 0) == <PyObject*>_ZERO
            and PyList_GET_ITEM(<object>v, 1) == <PyObject*>_ZERO)


cdef bint _idle_fast(PyObject* d, list idle_keys):
    """d is an idle queue's __dict__ for sure: the idle keys, in order, holding the small int 0
    or a list of two of them (False: compare it the slow way)."""
    cdef Py_ssize_t pos = 0, j = 0
    cdef PyObject* k
    cdef PyObject* v
    if type(<object>d) is not dict or len(<dict>d) != len(idle_keys):
        return False
    while PyDict_Next(<object>d, &pos, &k, &v):
        if k != <PyObject*>idle_keys[j] or not _zero_value(v):
            return False
        j += 1
    return True


def proxy_touched(vqs):
    """emu.transport.virtio_pci._touched: the indices of the queues whose fields differ from
    an idle ProxyQueue's.  A queue is passed over when its __dict__ holds the idle keys in
    their order with the cached small int 0 in each (or two of them in a list): those are
    equal to the idle state; every other one is compared with it as _touched does.  On 3.11
    a split-table __dict__ (the instances' shared keys) is read as its values array once its
    keys object is seen to start with the idle keys.  Anything but a list of ProxyQueues
    goes to _touched."""
    if type(vqs) is not list:
        return _VP._touched(vqs)
    cdef list qs = <list>vqs
    cdef dict idle = _VP._IDLE
    cdef list keys = list(idle)
    cdef list out = []
    cdef Py_ssize_t i, j, n = len(qs), nk = len(keys)
    cdef PyObject** dp
    cdef PyObject** vals
    cdef void* shared = NULL            # a split table's keys object that starts with `keys`
    cdef PyObject* karr[8]
    cdef bint idle_q
    if nk > 8:
        return _VP._touched(vqs)
    for j in range(nk):
        karr[j] = <PyObject*>keys[j]
    for i in range(n):
        if type(qs[i]) is not _ProxyQueue:
            return _VP._touched(vqs)
    for i in range(n):
        dp = _PyObject_GetDictPtr(qs[i])
        if dp == NULL or dp[0] == NULL:
            return _VP._touched(vqs)
        vals = vb_split_values(dp[0])
        if vals != NULL and shared == NULL and vb_split_keys_start(vb_keys_of(dp[0]), karr, nk):
            shared = vb_keys_of(dp[0])
        if vals != NULL and shared != NULL and vb_keys_of(dp[0]) == shared and vb_used(dp[0]) == nk:
            idle_q = True
            for j in range(nk):
                if vals[j] == NULL or not _zero_value(vals[j]):
                    idle_q = False
                    break
        else:
            idle_q = _idle_fast(dp[0], keys)
        if not idle_q and <object>dp[0] != idle:
            out.append(i)
    return out


def reduce_proxy(px):
    """What pickling a VirtioPciProxy gives (object.__reduce_ex__: copyreg.__newobj__ and
    __getstate__'s dict), the dict made with proxy_touched; any other object or a proxy
    whose class was changed is reduced the default way."""
    cls = _VirtioPciProxy
    if (type(px) is not cls or cls.__getstate__ is not _PY_GETSTATE
            or cls.state_with is not _PY_STATE_WITH or cls.__reduce_ex__ is not _OBJ_REDUCE_EX
            or cls.__reduce__ is not _OBJ_REDUCE or hasattr(cls, "__getnewargs_ex__")
            or hasattr(cls, "__getnewargs__")):
        return px.__reduce_ex__(_PROTO)
    return (_NEWOBJ, (_VirtioPciProxy,), px.state_with(proxy_touched), None, None)
