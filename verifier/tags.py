"""RPM header tag numbers and data types, as tables.

Numbers are those of rpm's ``rpmtag.h`` (rpm 4.x and rpm 6).  ``TAG_TYPES``
says which data type a tag must carry in a main header; the parser rejects a
known tag stored with another type (rpm's ``hdrchkTagType``), and lets unknown
tags through for forward compatibility.
"""

from __future__ import annotations

import enum


class TagType(enum.IntEnum):
    """RPM_*_TYPE: the type field of a header index entry."""

    NULL = 0
    CHAR = 1
    INT8 = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    STRING = 6
    BIN = 7
    STRING_ARRAY = 8
    I18NSTRING = 9


#: Size in bytes of one element of each fixed-size type; also its alignment.
TYPE_SIZES = {
    TagType.CHAR: 1,
    TagType.INT8: 1,
    TagType.INT16: 2,
    TagType.INT32: 4,
    TagType.INT64: 8,
    TagType.BIN: 1,
}
STRING_TYPES = frozenset({TagType.STRING, TagType.STRING_ARRAY, TagType.I18NSTRING})


class Tag(enum.IntEnum):
    """Main-header tags (RPMTAG_*) that usrview reads."""

    HEADERIMAGE = 61
    HEADERSIGNATURES = 62
    HEADERIMMUTABLE = 63
    HEADERI18NTABLE = 100

    NAME = 1000
    VERSION = 1001
    RELEASE = 1002
    EPOCH = 1003
    SUMMARY = 1004
    BUILDTIME = 1006
    SIZE = 1009
    LICENSE = 1014
    OS = 1021
    ARCH = 1022
    PREIN = 1023
    POSTIN = 1024
    PREUN = 1025
    POSTUN = 1026
    OLDFILENAMES = 1027
    FILESIZES = 1028
    FILESTATES = 1029
    FILEMODES = 1030
    FILERDEVS = 1033
    FILEMTIMES = 1034
    FILEDIGESTS = 1035
    FILELINKTOS = 1036
    FILEFLAGS = 1037
    FILEUSERNAME = 1039
    FILEGROUPNAME = 1040
    SOURCERPM = 1044
    FILEVERIFYFLAGS = 1045
    TRIGGERSCRIPTS = 1065
    VERIFYSCRIPT = 1079
    PREINPROG = 1085
    POSTINPROG = 1086
    PREUNPROG = 1087
    POSTUNPROG = 1088
    TRIGGERSCRIPTPROG = 1092
    VERIFYSCRIPTPROG = 1091
    FILEDEVICES = 1095
    FILEINODES = 1096
    FILELANGS = 1097
    DIRINDEXES = 1116
    BASENAMES = 1117
    DIRNAMES = 1118
    PAYLOADFORMAT = 1124
    PAYLOADCOMPRESSOR = 1125
    PAYLOADFLAGS = 1126
    FILECOLORS = 1140
    PRETRANS = 1151
    POSTTRANS = 1152
    PRETRANSPROG = 1153
    POSTTRANSPROG = 1154
    LONGFILESIZES = 5008
    LONGSIZE = 5009
    FILECAPS = 5010
    FILEDIGESTALGO = 5011
    FILETRIGGERSCRIPTS = 5066
    FILETRIGGERSCRIPTPROG = 5067
    TRANSFILETRIGGERSCRIPTS = 5076
    TRANSFILETRIGGERSCRIPTPROG = 5077
    PAYLOADDIGEST = 5092
    PAYLOADDIGESTALGO = 5093
    PAYLOADDIGESTALT = 5097
    PREUNTRANS = 5103
    POSTUNTRANS = 5104
    PREUNTRANSPROG = 5105
    POSTUNTRANSPROG = 5106
    RPMFORMAT = 5114


class SigTag(enum.IntEnum):
    """Signature-header tags (RPMSIGTAG_*)."""

    DSA = 267
    RSA = 268
    SHA1 = 269
    LONGSIZE = 270
    LONGARCHIVESIZE = 271
    SHA256 = 273
    FILESIGNATURES = 274
    FILESIGNATURELENGTH = 275
    VERITYSIGNATURES = 276
    VERITYSIGNATUREALGO = 277
    OPENPGP = 278
    SHA3_256 = 279
    SIZE = 1000
    PGP = 1002
    MD5 = 1004
    GPG = 1005
    PAYLOADSIZE = 1007
    RESERVEDSPACE = 1008


_T = TagType
#: The type each known main-header tag must have.
TAG_TYPES: dict[int, TagType] = {
    Tag.NAME: _T.STRING,
    Tag.VERSION: _T.STRING,
    Tag.RELEASE: _T.STRING,
    Tag.EPOCH: _T.INT32,
    Tag.SUMMARY: _T.I18NSTRING,
    Tag.BUILDTIME: _T.INT32,
    Tag.SIZE: _T.INT32,
    Tag.LICENSE: _T.STRING,
    Tag.OS: _T.STRING,
    Tag.ARCH: _T.STRING,
    Tag.PREIN: _T.STRING,
    Tag.POSTIN: _T.STRING,
    Tag.PREUN: _T.STRING,
    Tag.POSTUN: _T.STRING,
    Tag.OLDFILENAMES: _T.STRING_ARRAY,
    Tag.FILESIZES: _T.INT32,
    Tag.FILESTATES: _T.CHAR,
    Tag.FILEMODES: _T.INT16,
    Tag.FILERDEVS: _T.INT16,
    Tag.FILEMTIMES: _T.INT32,
    Tag.FILEDIGESTS: _T.STRING_ARRAY,
    Tag.FILELINKTOS: _T.STRING_ARRAY,
    Tag.FILEFLAGS: _T.INT32,
    Tag.FILEUSERNAME: _T.STRING_ARRAY,
    Tag.FILEGROUPNAME: _T.STRING_ARRAY,
    Tag.SOURCERPM: _T.STRING,
    Tag.FILEVERIFYFLAGS: _T.INT32,
    Tag.TRIGGERSCRIPTS: _T.STRING_ARRAY,
    Tag.VERIFYSCRIPT: _T.STRING,
    Tag.FILEDEVICES: _T.INT32,
    Tag.FILEINODES: _T.INT32,
    Tag.FILELANGS: _T.STRING_ARRAY,
    Tag.DIRINDEXES: _T.INT32,
    Tag.BASENAMES: _T.STRING_ARRAY,
    Tag.DIRNAMES: _T.STRING_ARRAY,
    Tag.PAYLOADFORMAT: _T.STRING,
    Tag.PAYLOADCOMPRESSOR: _T.STRING,
    Tag.PAYLOADFLAGS: _T.STRING,
    Tag.FILECOLORS: _T.INT32,
    Tag.PRETRANS: _T.STRING,
    Tag.POSTTRANS: _T.STRING,
    Tag.LONGFILESIZES: _T.INT64,
    Tag.LONGSIZE: _T.INT64,
    Tag.FILECAPS: _T.STRING_ARRAY,
    Tag.FILEDIGESTALGO: _T.INT32,
    Tag.FILETRIGGERSCRIPTS: _T.STRING_ARRAY,
    Tag.TRANSFILETRIGGERSCRIPTS: _T.STRING_ARRAY,
    Tag.PAYLOADDIGEST: _T.STRING_ARRAY,
    Tag.PAYLOADDIGESTALGO: _T.INT32,
    Tag.PAYLOADDIGESTALT: _T.STRING_ARRAY,
    Tag.PREUNTRANS: _T.STRING,
    Tag.POSTUNTRANS: _T.STRING,
    Tag.RPMFORMAT: _T.INT32,
}

#: Scriptlet body tags and their names as rpm's spec syntax spells them.
SCRIPTLET_TAGS: dict[int, str] = {
    Tag.PRETRANS: "%pretrans",
    Tag.PREIN: "%pre",
    Tag.POSTIN: "%post",
    Tag.PREUN: "%preun",
    Tag.POSTUN: "%postun",
    Tag.POSTTRANS: "%posttrans",
    Tag.PREUNTRANS: "%preuntrans",
    Tag.POSTUNTRANS: "%postuntrans",
    Tag.VERIFYSCRIPT: "%verifyscript",
    Tag.TRIGGERSCRIPTS: "%trigger",
    Tag.FILETRIGGERSCRIPTS: "%filetrigger",
    Tag.TRANSFILETRIGGERSCRIPTS: "%transfiletrigger",
}
#: Interpreter-only scriptlets (e.g. ``%post -p /sbin/ldconfig``) have a PROG
#: tag and no body.
SCRIPTLET_PROG_TAGS: dict[int, str] = {
    Tag.PRETRANSPROG: "%pretrans",
    Tag.PREINPROG: "%pre",
    Tag.POSTINPROG: "%post",
    Tag.PREUNPROG: "%preun",
    Tag.POSTUNPROG: "%postun",
    Tag.POSTTRANSPROG: "%posttrans",
    Tag.PREUNTRANSPROG: "%preuntrans",
    Tag.POSTUNTRANSPROG: "%postuntrans",
    Tag.VERIFYSCRIPTPROG: "%verifyscript",
    Tag.TRIGGERSCRIPTPROG: "%trigger",
    Tag.FILETRIGGERSCRIPTPROG: "%filetrigger",
    Tag.TRANSFILETRIGGERSCRIPTPROG: "%transfiletrigger",
}
