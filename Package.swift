// swift-tools-version: 6.0
// Hato — a clustered SMTP relay. No Swift package dependencies: the toolchain
// and system C libraries (OpenSSL, SQLite, libpq, libresolv) only.
// Linux only (glibc sockets, epoll-free blocking I/O, libresolv, /proc): building on another
// system stops at the #error in Sources/Shared/Support/Platform.swift.
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

// Every target names each module it imports as a direct dependency: with Swift 6.3.1 an
// executable whose only dependency was HatoCoordinator (importing HatoShared through it) was not
// rebuilt when a struct nested in HatoShared's ClusterConfig gained a stored property, and
// crashed at start copying ClusterConfig with the old layout (seen in debug and release builds).
let package = Package(
    name: "hato",
    products: [
        .executable(name: "hato-coordinator", targets: ["hato-coordinator"]),
        .executable(name: "hato-node", targets: ["hato-node"]),
    ],
    targets: [
        .systemLibrary(
            name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(
            name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CPostgreSQL", path: "Sources/CPostgreSQL", pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]),
        .systemLibrary(
            name: "CResolv", path: "Sources/CResolv",
            providers: [.apt(["libc6-dev"])]),
        .target(
            name: "HatoShared", dependencies: ["COpenSSL", "CResolv"],
            path: "Sources/Shared", swiftSettings: strict),
        .target(
            name: "HatoCoordinator", dependencies: ["HatoShared", "CSQLite", "CPostgreSQL"],
            path: "Sources/Coordinator/Core", swiftSettings: strict),
        .executableTarget(
            name: "hato-coordinator", dependencies: ["HatoCoordinator", "HatoShared"],
            path: "Sources/Coordinator/CLI", swiftSettings: strict),
        .target(
            name: "HatoNode", dependencies: ["HatoShared"],
            path: "Sources/Node/Core", swiftSettings: strict),
        .executableTarget(
            name: "hato-node", dependencies: ["HatoNode", "HatoShared"],
            path: "Sources/Node/CLI", swiftSettings: strict),
        // Development and test tools, never linked into the product binaries: the capture MX,
        // process spawning, header and DKIM helpers (HatoTestKit), and the demo's sink.
        .target(
            name: "HatoTestKit", dependencies: ["HatoShared"],
            path: "Sources/TestKit", swiftSettings: strict),
        .executableTarget(
            name: "hato-sink", dependencies: ["HatoTestKit", "HatoShared"],
            path: "Sources/DevTools/hato-sink", swiftSettings: strict),
        .testTarget(
            name: "SharedTests", dependencies: ["HatoShared", "HatoTestKit"],
            path: "Tests/SharedTests", swiftSettings: strict),
        .testTarget(
            name: "CoordinatorTests", dependencies: ["HatoCoordinator", "HatoShared", "HatoTestKit"],
            path: "Tests/CoordinatorTests", swiftSettings: strict),
        .testTarget(
            name: "NodeTests", dependencies: ["HatoNode", "HatoShared", "HatoTestKit"],
            path: "Tests/NodeTests", swiftSettings: strict),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["HatoTestKit", "HatoShared", "HatoCoordinator", "hato-coordinator", "hato-node"],
            path: "Tests/IntegrationTests", swiftSettings: strict),
    ]
)
