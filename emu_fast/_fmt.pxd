# The text of ints in the compiled handlers' detail strings: f"{x}" and f"{x:#x}" written in C
# (CPython's own int formatting, and snprintf, cost more).  Inline functions: each handler module
# that cimports them compiles its own copy; nothing is imported at run time.  A value that is not
# an exact int fitting a long long goes through format(), as the f-string would.
from libc.string cimport memcpy

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1


cdef inline int _pdec(char* p, long long v) noexcept nogil:
    """Write "%lld" of v at p; return its length (at most 20)."""
    cdef char tmp[24]
    cdef int n = 0, k = 0
    cdef unsigned long long u = <unsigned long long>v
    if v < 0:
        u = <unsigned long long>0 - u
        p[0] = 45          # '-'
        k = 1
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if not u:
            break
    while n:
        n -= 1
        p[k] = tmp[n]
        k += 1
    return k


cdef inline int _phex(char* p, unsigned long long u) noexcept nogil:
    """Write "0x%llx" of u at p; return its length (at most 18)."""
    cdef char tmp[24]
    cdef int n = 0, k = 2
    cdef int d
    p[0] = 48
    p[1] = 120         # "0x"
    while True:
        d = <int>(u & 15)
        tmp[n] = <char>(48 + d if d < 10 else 87 + d)
        n += 1
        u >>= 4
        if not u:
            break
    while n:
        n -= 1
        p[k] = tmp[n]
        k += 1
    return k


cdef inline int _pstr(char* p, const char* s) noexcept nogil:
    """Copy the C string s to p (without its NUL); return its length."""
    cdef int k = 0
    while s[k]:
        p[k] = s[k]
        k += 1
    return k


cdef inline bint _ll(object o, long long* out) except -1:
    """o is an int (exactly) that fits a long long: then f"{o}" / str(o) is "%lld" of *out."""
    cdef int ovf = 0
    cdef long long v
    if type(o) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(o, &ovf)
    if ovf:
        return False
    out[0] = v
    return True


cdef inline str _ascii(const char* p, Py_ssize_t n):
    """the str of n ASCII bytes (as PyUnicode_DecodeASCII makes it)"""
    cdef object u = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(u), p, <size_t>n)
    return <str>u


cdef inline str _decll(long long v):
    """format(v, '')"""
    cdef char buf[24]
    return _ascii(buf, _pdec(buf, v))


cdef inline str _hexll(long long v):
    """format(v, '#x')"""
    cdef char buf[24]
    cdef int n
    if v >= 0:
        n = _phex(buf, <unsigned long long>v)
    else:
        buf[0] = 45        # '-'
        n = 1 + _phex(buf + 1, <unsigned long long>0 - <unsigned long long>v)
    return _ascii(buf, n)


cdef inline str _dec(object o):
    """format(o, '') (f"{o}")"""
    cdef long long v
    if _ll(o, &v):
        return _decll(v)
    return format(o, "")


cdef inline str _hex(object o):
    """format(o, '#x') (f"{o:#x}")"""
    cdef long long v
    if _ll(o, &v):
        return _hexll(v)
    return format(o, "#x")


cdef inline str _str(object o):
    """str(o)"""
    if type(o) is int:
        return _dec(o)
    return str(o)
