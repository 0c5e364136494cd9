# cython: language_level=3
# Reading and writing __slots__ members at their offsets (what a member descriptor does).
#
# The emulator's hot state classes keep their fields in __slots__ (emu.machine.Machine,
# emu.mem.guest_memory.GuestMemory, the guest/device/block state dataclasses).  A compiled
# `o.name` goes through PyObject_GenericGetAttr (a type lookup, the descriptor, its getter):
# ~200 instructions.  `sget(o, cls, off, name)` reads the member directly when o is exactly
# cls and the member is a plain writable object slot (T_OBJECT_EX: what every __slots__ entry
# of a Python class is), else calls getattr, so an unset slot, a subclass or a changed class
# behave (and fail) exactly as `o.name` does.  `sset` is object.__setattr__ on such a member.
#
# A module resolves its offsets once at import: `slot_offsets(cls, names, out)` fills out[i]
# with the offset of member names[i], or -1 for every name when cls is not plain (a
# __setattr__ or __new__ of its own, or a name that is not a plain member), and the access
# functions then always take the getattr path.

from cpython.object cimport PyObject

cdef extern from *:
    """
    #include "structmember.h"
    static CYTHON_INLINE PyObject* vbs_peek(PyObject* o, Py_ssize_t off) {
        return *(PyObject**)((char*)o + off);
    }
    static int vbs_member_offset(PyObject* d, Py_ssize_t* off) {
        PyMemberDef* m = ((PyMemberDescrObject*)d)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return 0;
        *off = m->offset;
        return 1;
    }
    /* obj.<slot at off> = v (PyMember_SetOne, T_OBJECT_EX) */
    static CYTHON_INLINE void vbs_set(PyObject* o, Py_ssize_t off, PyObject* v) {
        PyObject** p = (PyObject**)((char*)o + off);
        PyObject* old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    """
    PyObject* vbs_peek(object o, Py_ssize_t off)
    int vbs_member_offset(object d, Py_ssize_t* off)
    void vbs_set(object o, Py_ssize_t off, object v)


cdef inline bint slot_offsets(object cls, tuple names, Py_ssize_t* out) except -1:
    """out[i] = the offset of member names[i] of cls (True); all -1 (False) unless every name
    is a plain writable object slot of cls and cls sets attributes as object.__setattr__."""
    import types as _types
    cdef Py_ssize_t i, n = len(names)
    cdef bint ok = (getattr(cls, "__setattr__", None) is object.__setattr__
                    and getattr(cls, "__getattribute__", None) is object.__getattribute__)
    if ok:
        for i in range(n):
            d = None
            for c in cls.__mro__:               # the member the attribute lookup finds
                d = c.__dict__.get(names[i])
                if d is not None:
                    break
            if type(d) is not _types.MemberDescriptorType or not vbs_member_offset(d, &out[i]):
                ok = False
                break
    if not ok:
        for i in range(n):
            out[i] = -1
    return ok


cdef inline object sget(object o, object cls, Py_ssize_t off, str name):
    """o.<name>"""
    cdef PyObject* p
    if off >= 0 and type(o) is cls:
        p = vbs_peek(o, off)
        if p != NULL:
            return <object>p
    return getattr(o, name)


cdef inline object sget_or(object o, object cls, Py_ssize_t off, str name, object default):
    """getattr(o, name, default)"""
    cdef PyObject* p
    if off >= 0 and type(o) is cls:
        p = vbs_peek(o, off)
        if p != NULL:
            return <object>p
    return getattr(o, name, default)


cdef inline int sset(object o, object cls, Py_ssize_t off, str name, object v) except -1:
    """o.<name> = v"""
    if off >= 0 and type(o) is cls:
        vbs_set(o, off, v)
    else:
        setattr(o, name, v)
    return 0
