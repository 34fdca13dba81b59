# Install rules and the Debian package (CPack's DEB generator).
#
#   packaging/package.sh                 release build + build/urunc-bootfs_*.deb
#   cmake --build BUILD --target package the same from any configured build
#
# Installed (prefix /usr):
#   bin/urunc-bootfs                       the thin client (no gRPC)
#   sbin/urunc-bootfsd                     the host daemon and the full verbs
#   lib/systemd/system/urunc-bootfs.{service,socket}  the daemon, socket-activated
#   sbin/mount.fuse.urunc-bootfs -> ../bin/urunc-bootfs   mount -t fuse.urunc-bootfs
#     (mount(8) looks in /sbin, which is /usr/sbin on Debian 12's merged /usr)
#   share/man/man8/urunc-bootfs.8.gz (+ a link for the helper)
#   share/bash-completion/completions/urunc-bootfs
#   share/doc/urunc-bootfs/{copyright,changelog.Debian.gz,examples/config.json}
#   share/lintian/overrides/urunc-bootfs
#
# The package is for the Debian release it is built on: dpkg-shlibdeps
# computes Depends from the libraries linked (their names differ between
# Debian 12 and 13, e.g. the 64-bit time_t "t64" renames), and the version
# carries the release, 0.1.0-1+deb12 or 0.1.0-1+deb13 (so one built on 13
# sorts above one built on 12 and upgrades it with the system).
include(GNUInstallDirs)

# The programs the package installs, each a target of this project.
set(URUNC_BOOTFS_PACKAGE_PROGRAMS urunc-bootfs urunc-bootfsd)

set(URUNC_BOOTFS_PACKAGE_MAINTAINER "urunc-bootfs maintainers <maintainers@urunc-bootfs.invalid>"
    CACHE STRING "Maintainer field of the Debian package")
set(URUNC_BOOTFS_PACKAGE_RELEASE "1" CACHE STRING "Debian revision of the package")
cmake_host_system_information(RESULT distro_id QUERY DISTRIB_ID)
cmake_host_system_information(RESULT distro_version QUERY DISTRIB_VERSION_ID)
if(distro_id STREQUAL "debian" AND distro_version MATCHES "^[0-9]+$")
  set(default_suffix "+deb${distro_version}")
else()
  set(default_suffix "")  # testing, sid or another distribution: no release to name
endif()
set(URUNC_BOOTFS_PACKAGE_RELEASE_SUFFIX "${default_suffix}" CACHE STRING
    "Appended to the Debian revision: the release the package is built for (+deb12, +deb13)")

set(pkg_src ${CMAKE_CURRENT_LIST_DIR})
set(pkg_out ${CMAKE_BINARY_DIR}/packaging)
file(MAKE_DIRECTORY ${pkg_out})
set(deb_revision ${URUNC_BOOTFS_PACKAGE_RELEASE}${URUNC_BOOTFS_PACKAGE_RELEASE_SUFFIX})
set(deb_version ${PROJECT_VERSION}-${deb_revision})

# Man page (version filled in) and changelog, gzip -9n as Debian wants.
set(VERSION ${PROJECT_VERSION})
configure_file(${pkg_src}/man/urunc-bootfs.8 ${pkg_out}/urunc-bootfs.8 @ONLY)
set(DEB_VERSION ${deb_version})
set(DEB_MAINTAINER ${URUNC_BOOTFS_PACKAGE_MAINTAINER})
string(TIMESTAMP DEB_DATE "%a, %d %b %Y %H:%M:%S +0000" UTC)  # honours SOURCE_DATE_EPOCH
string(TIMESTAMP DEB_YEAR "%Y" UTC)
configure_file(${pkg_src}/debian/changelog.in ${pkg_out}/changelog.Debian @ONLY)
configure_file(${pkg_src}/debian/copyright.in ${pkg_out}/copyright @ONLY)
find_program(URUNC_BOOTFS_GZIP gzip REQUIRED)
add_custom_command(
  OUTPUT ${pkg_out}/urunc-bootfs.8.gz ${pkg_out}/changelog.Debian.gz
  COMMAND ${URUNC_BOOTFS_GZIP} -9nf -k ${pkg_out}/urunc-bootfs.8
  COMMAND ${URUNC_BOOTFS_GZIP} -9nf -k ${pkg_out}/changelog.Debian
  DEPENDS ${pkg_out}/urunc-bootfs.8 ${pkg_out}/changelog.Debian
  COMMENT "gzip man page and changelog"
  VERBATIM)
add_custom_target(urunc-bootfs-docs ALL DEPENDS ${pkg_out}/urunc-bootfs.8.gz ${pkg_out}/changelog.Debian.gz)
# Everything the package holds that is built (what packaging/package.sh builds).
add_custom_target(urunc-bootfs-package-contents DEPENDS ${URUNC_BOOTFS_PACKAGE_PROGRAMS} urunc-bootfs-docs)

# Relative links, made here and installed as links.
file(CREATE_LINK ../bin/urunc-bootfs ${pkg_out}/mount.fuse.urunc-bootfs SYMBOLIC)
file(CREATE_LINK urunc-bootfs.8.gz ${pkg_out}/mount.fuse.urunc-bootfs.8.gz SYMBOLIC)

install(TARGETS urunc-bootfs RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS urunc-bootfsd RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})
install(FILES ${pkg_src}/systemd/urunc-bootfs.service ${pkg_src}/systemd/urunc-bootfs.socket
        DESTINATION lib/systemd/system)
# A stripped install (cpack, install --strip) also loses .comment and .note,
# as dh_strip does.
if(CMAKE_OBJCOPY)
  foreach(program ${CMAKE_INSTALL_BINDIR}/urunc-bootfs ${CMAKE_INSTALL_SBINDIR}/urunc-bootfsd)
    install(CODE "if(CMAKE_INSTALL_DO_STRIP)
      execute_process(COMMAND \"${CMAKE_OBJCOPY}\" --remove-section=.comment --remove-section=.note
        \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${program}\")
    endif()")
  endforeach()
endif()
install(FILES ${pkg_out}/mount.fuse.urunc-bootfs DESTINATION ${CMAKE_INSTALL_SBINDIR})
install(FILES ${pkg_out}/urunc-bootfs.8.gz ${pkg_out}/mount.fuse.urunc-bootfs.8.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)
install(FILES ${pkg_src}/completion/urunc-bootfs
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/bash-completion/completions)
install(FILES ${pkg_out}/copyright ${pkg_out}/changelog.Debian.gz
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${pkg_src}/debian/lintian-overrides
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/lintian/overrides RENAME urunc-bootfs)
install(FILES ${pkg_src}/examples/config.json
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# ------------------------------------------------------------------- CPack
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME urunc-bootfs)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT ${URUNC_BOOTFS_PACKAGE_MAINTAINER})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "serve a container's boot files read-only over FUSE")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
set(CPACK_DEBIAN_PACKAGE_NAME urunc-bootfs)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${deb_revision})
set(CPACK_DEBIAN_PACKAGE_MAINTAINER ${URUNC_BOOTFS_PACKAGE_MAINTAINER})
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Libraries (libfuse3, gRPC, protobuf, libdevmapper, spdlog...) from
# dpkg-shlibdeps; fuse3 for fusermount3 and /etc/fuse.conf; mount(8).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "fuse3, mount")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "containerd, dmsetup")
# CPack puts CPACK_PACKAGE_DESCRIPTION_SUMMARY on the Description line; this
# is the extended description under it.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "urunc-bootfs serves the boot artifacts of a container (its kernel, initrd
and urunc.json) read-only over FUSE, straight from a containerd view
snapshot of its image or from an already mounted root filesystem, so that
urunc and other VM-based container runtimes never copy them out of the
rootfs before booting a unikernel or a minimal Linux VM.
.
The package holds the urunc-bootfs command (mount, umount, status, list,
gc, hook and config verbs), the host daemon urunc-bootfsd that serves every
mount from one process (socket-activated by systemd, or started by the
first mount), the mount helper that makes
'mount -t fuse.urunc-bootfs' work, the manual page and bash completion.
Views on containerd's devmapper snapshotter are checked with libdevmapper.")
include(CPack)
